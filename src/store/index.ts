import type { Config } from '../config/index.js';
import { EmbeddedStore } from './embedded.js';
import { migrate } from './migrations.js';
import { PostgresStore } from './postgres.js';
import type { Store } from './types.js';

export { SqlError } from './embedded.js';
export type { Queryable, QueryResult, Statement, Store } from './types.js';
export { statement } from './types.js';

/**
 * Opens the store chosen by the config (PostgreSQL when `databaseUrl` is set, the embedded one
 * otherwise) and brings its schema up to date.
 */
export async function openStore(
  config: Pick<Config, 'databaseUrl' | 'databaseSchema' | 'dataDir'>,
): Promise<Store> {
  const store: Store = config.databaseUrl
    ? await PostgresStore.open(config.databaseUrl, config.databaseSchema)
    : await EmbeddedStore.open(config.dataDir, config.databaseSchema);
  try {
    await migrate(store);
  } catch (err) {
    await store.close().catch(() => undefined);
    throw err;
  }
  return store;
}
