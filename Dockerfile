# Herald node image. Build: docker build -t herald .
# Run one node (embedded store):  docker run -p 3000:3000 -v herald-data:/app/data herald
# Run a cluster node:             docker run -p 3000:3000 -e REDIS_URL=redis://redis:6379 -e DATABASE_URL=postgres://... herald
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY console ./console
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production PORT=3000 HOST=0.0.0.0 DATA_DIR=/app/data
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/console/dist ./console/dist
COPY package.json ./
RUN mkdir -p /app/data && chown -R node:node /app
USER node
EXPOSE 3000
# SIGTERM drains: readiness turns 503, clients are told to reconnect elsewhere, in-flight work finishes.
STOPSIGNAL SIGTERM
# libuv threads for DNS lookups (webhook SSRF checks) and file I/O: one hung lookup holds one.
ENV UV_THREADPOOL_SIZE=16
CMD ["node", "--max-semi-space-size=64", "--v8-pool-size=1", "dist/src/main.js"]
