import { existsSync } from 'node:fs';
import { isAbsolute, join, normalize } from 'node:path';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/**
 * Security headers of the console's pages: scripts and connections to this origin only (the
 * console talks to the node that serves it), no framing.
 */
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join('; ');

export const NOT_BUILT_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Herald console not built</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1f2933}
code{background:#eef2f7;padding:.1rem .3rem;border-radius:4px}</style></head>
<body><h1>The web console has not been built</h1>
<p>This node serves the console from <code>console/dist</code>, which does not exist yet.
Run <code>npm run build</code> (or <code>npm run build:console</code>) in the Herald folder, then reload this page.</p>
<p>Everything else (the API, <code>/healthz</code>, <code>/metrics</code>) works without it.</p></body></html>
`;

function pageHeaders(reply: FastifyReply): FastifyReply {
  return reply
    .header('cache-control', 'no-cache')
    .header('content-security-policy', CSP)
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'no-referrer');
}

/**
 * Serves the built console (`console/dist`) at `/console`: hashed assets with a long cache, the
 * console page for its routes, the cashier page at `/console/cashier`, and a 503 page that says how
 * to build it when it has not been built. The folder is checked on each request, so building while
 * the node runs is enough.
 */
export async function consoleStatic(app: FastifyInstance, distDir: string): Promise<void> {
  await app.register(async (scope) => {
    await scope.register(fastifyStatic, { root: distDir, serve: false, suppressWarning: true });

    const handler = async (request: FastifyRequest, reply: FastifyReply) => {
      if (!existsSync(join(distDir, 'index.html'))) {
        return reply
          .code(503)
          .header('cache-control', 'no-store')
          .header('retry-after', '60')
          .type('text/html; charset=utf-8')
          .send(NOT_BUILT_HTML);
      }
      const rel = ((request.params as Record<string, string | undefined>)['*'] ?? '').replace(
        /^\/+|\/+$/g,
        '',
      );
      const last = rel.split('/').pop() ?? '';
      if (last.includes('.')) {
        const file = normalize(rel);
        if (file.startsWith('..') || isAbsolute(file) || !existsSync(join(distDir, file))) {
          return reply.code(404).type('text/plain; charset=utf-8').send('Not found');
        }
        const hashed = file.startsWith('assets/');
        return reply
          .header('x-content-type-options', 'nosniff')
          .sendFile(file, { maxAge: hashed ? '365d' : 0, immutable: hashed });
      }
      const page = rel.split('/')[0] ?? '';
      if (page === 'cashier') return pageHeaders(reply).sendFile('cashier.html', { cacheControl: false });
      return pageHeaders(reply).sendFile('index.html', { cacheControl: false });
    };
    scope.get('/console', { schema: { hide: true } }, handler);
    scope.get('/console/*', { schema: { hide: true } }, handler);
  });
}
