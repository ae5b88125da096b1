// Builds the demo's web app into Django's static files (demo_project/todos/static/todos/app/).
// Run through `make demo` (npm ci, the generated schema, then `npm run build`).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));

export default defineConfig({
  // Asset and worker URLs relative to the bundle, so it works under any STATIC_URL.
  base: './',
  // @powersync/web ships web workers and WASM files: keep them out of dependency pre-bundling
  // and emit the workers as ES modules (the SDK's documented Vite setup).
  optimizeDeps: { exclude: ['@journeyapps/wa-sqlite', '@powersync/web'] },
  worker: { format: 'es' },
  build: {
    outDir: here('../todos/static/todos/app'),
    emptyOutDir: true,
    target: 'es2022',
    // No index.html: Django's template loads app.js (a fixed name, so the template needs no manifest).
    rollupOptions: {
      input: here('src/main.js'),
      output: {
        entryFileNames: 'app.js',
        chunkFileNames: 'chunks/[name]-[hash].js',
        assetFileNames: 'assets/[name]-[hash][extname]',
      },
    },
    chunkSizeWarningLimit: 2000,
  },
});
