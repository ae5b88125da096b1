from django.contrib import admin

from .models import Todo, TodoList


class TodoInline(admin.TabularInline):
    model = Todo
    extra = 0


@admin.register(TodoList)
class TodoListAdmin(admin.ModelAdmin):
    list_display = ["name", "owner_id", "created_at"]
    search_fields = ["name", "owner_id"]
    inlines = [TodoInline]


@admin.register(Todo)
class TodoAdmin(admin.ModelAdmin):
    list_display = ["description", "list", "completed", "created_by", "created_at"]
    list_filter = ["completed"]
    search_fields = ["description"]
