"""The demo's web app on the Django side: login, the app page's configuration, demo_seed for Django users.

The app itself runs in a browser: tests/e2e/test_web_app_e2e.py.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from demo_project.todos.models import Todo, TodoList


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_app_page_sends_anonymous_users_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/"
    page = client.get(response["Location"]).content.decode()
    assert 'name="username"' in page and 'name="password"' in page and "csrfmiddlewaretoken" in page


@pytest.mark.django_db
def test_login_leads_to_the_app_with_the_endpoint_and_the_token_subject(client):
    user = get_user_model().objects.create_user("ann", password="pw")
    response = client.post("/accounts/login/", {"username": "ann", "password": "pw"})
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/").content.decode()
    config = json.loads(re.search(r'<script id="powersync-config" type="application/json">(.*?)</script>',
                                  page).group(1))
    assert config == {"endpoint": "http://testserver", "userId": str(user.pk), "username": "ann"}
    # The app's fetchCredentials asks the token view: its subject is the one the page names.
    assert client.get("/api/token").json()["user_id"] == config["userId"]


@pytest.mark.django_db
def test_app_page_loads_the_bundle_or_says_how_to_build_it(client, monkeypatch):
    client.force_login(get_user_model().objects.create_user("ann"))
    monkeypatch.setattr("django.contrib.staticfiles.finders.find", lambda path, **kw: "/built/app.js")
    page = client.get("/").content.decode()
    assert '<script type="module" src="/static/todos/app/app.js">' in page and "make demo" not in page
    monkeypatch.setattr("django.contrib.staticfiles.finders.find", lambda path, **kw: None)
    page = client.get("/").content.decode()
    assert "app.js" not in page and "make demo" in page


@pytest.mark.django_db
def test_logout_is_a_post_back_to_the_login_page(client):
    client.force_login(get_user_model().objects.create_user("ann"))
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert client.get("/api/token").status_code == 401


@pytest.mark.django_db
def test_demo_seed_for_a_django_user_owns_the_lists_as_its_token_subject(client):
    text = run("demo_seed", "--user", "demo", "--password", "demo", "--lists", "2", "--todos-per-list", "3")
    user = get_user_model().objects.get(username="demo")
    assert "Created user 'demo'" in text and f"Created 2 lists and 6 todos for '{user.pk}'" in text
    assert TodoList.objects.filter(owner_id=str(user.pk)).count() == 2
    assert set(Todo.objects.values_list("created_by", flat=True)) == {str(user.pk)}
    assert client.login(username="demo", password="demo")
    assert client.get("/api/token").json()["user_id"] == str(user.pk)
    # Again (as `make demo` does on every start): the user and their lists are kept.
    text = run("demo_seed", "--user", "demo", "--password", "demo", "--if-empty")
    assert "already has lists" in text and "Created user" not in text
    assert get_user_model().objects.count() == 1 and TodoList.objects.count() == 2


@pytest.mark.django_db
def test_demo_seed_needs_one_owner_and_a_password_to_create_a_user():
    with pytest.raises(CommandError, match="give --password"):
        run("demo_seed", "--user", "nobody")
    with pytest.raises(CommandError):
        run("demo_seed", "--user", "x", "--owner", "y")
    with pytest.raises(CommandError):
        run("demo_seed")
    assert not get_user_model().objects.exists() and not TodoList.objects.exists()
