export { type Config, ConfigError, loadConfig } from './config/index.js';
export { type ErrorCode, ErrorCodes, HeraldError } from './errors.js';
export type { NotifyInput, NotifyResult } from './router/notify.js';
export type { Notification } from './router/types.js';
export { type Herald, type HeraldOptions, startHerald, VERSION } from './server.js';
