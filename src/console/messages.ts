/** Why the console refuses everyone in apps mode when ADMIN_TOKEN is not set. */
export const APPS_MODE_NEEDS_TOKEN =
  'This node runs in apps mode: set ADMIN_TOKEN to use the web console (without it, the console would let anyone act for every app).';
