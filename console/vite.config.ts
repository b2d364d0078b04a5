// Builds the web console into console/dist, served by Herald at /console (src/console/static.ts).
// Run from the repository root: `npm run build:console` (part of `npm run build`).
// `npx vite --config console/vite.config.ts` serves it with hot reload, proxying the API to a node on :3000.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const root = fileURLToPath(new URL('.', import.meta.url));
const herald = process.env.HERALD_URL ?? 'http://127.0.0.1:3000';

export default defineConfig({
  root,
  base: '/console/',
  // Preact's JSX through esbuild: no framework plugin needed.
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2020',
    reportCompressedSize: false,
    rollupOptions: {
      input: { main: `${root}index.html`, cashier: `${root}cashier.html` },
    },
  },
  server: {
    proxy: {
      '/admin': herald,
      '/payments': herald,
      '/devices': herald,
      '/socket.io': { target: herald, ws: true },
    },
  },
});
