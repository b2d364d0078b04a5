/**
 * Checks that a store answers a trivial query within `timeoutMs` (readiness probes, start-up), for both
 * kinds of store: rejects with the query's error or with a timeout.
 */
export async function pingStore(query: (sql: string) => Promise<unknown>, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      query('SELECT 1'),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`store did not answer within ${timeoutMs}ms`)), timeoutMs);
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}
