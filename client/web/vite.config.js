import { resolve } from 'node:path';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

const root = import.meta.dirname;

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // Two pages: the chat at / and the side-by-side demo at /demo.
    rolldownOptions: {
      input: {
        index: resolve(root, 'index.html'),
        demo: resolve(root, 'demo.html'),
      },
      // Both pages share React, markdown-it and socket.io-client: one cacheable chunk.
      // highlight.js and KaTeX stay out of it: they load on first need (src/renderers.js).
      output: {
        codeSplitting: {
          groups: [
            { name: 'vendor', test: /node_modules[\\/](?!highlight\.js[\\/]|katex[\\/])/ },
            { name: 'common', minShareCount: 2 },
          ],
        },
      },
    },
  },
  server: {
    // `npm run dev` serves the page; the Flask service on :5000 answers the socket, the
    // model list and the conversations.
    proxy: {
      '/socket.io': { target: 'http://127.0.0.1:5000', ws: true },
      '/v1': { target: 'http://127.0.0.1:5000' },
      '/api': { target: 'http://127.0.0.1:5000' },
    },
  },
  test: {
    include: ['src/**/*.test.js'],
    environment: 'node',
  },
});
