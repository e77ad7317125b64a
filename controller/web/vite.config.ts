import { loadEnv } from 'vite';
import { defineConfig } from 'vitest/config';

// The controller's Content-Security-Policy (controller/src/api/layers.rs). `npm run preview`
// sends it too, so a preview shows any violation the real server would cause.
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; " +
  "form-action 'self'; frame-ancestors 'none'";

export default defineConfig(({ mode }) => {
  // `PIFLEET_API=https://localhost:8443 npm run dev` proxies /api to a running controller. Its
  // certificate is self-signed, hence `secure: false`: this is for local development only.
  const api = loadEnv(mode, '.', 'PIFLEET_').PIFLEET_API;
  const proxy = api ? { '/api': { target: api, changeOrigin: true, secure: false } } : undefined;
  return {
    esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
    build: {
      // The polyfill would be an inline script, which the controller's CSP forbids.
      modulePreload: { polyfill: false },
      target: 'es2022',
    },
    server: { proxy },
    preview: { proxy, headers: { 'Content-Security-Policy': CSP } },
    test: {
      environment: 'node',
      include: ['src/**/*.test.ts'],
    },
  };
});
