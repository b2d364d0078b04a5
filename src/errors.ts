/**
 * Every error that reaches a user (HTTP body, Socket.IO ack, `error` event, `connect_error`) carries one
 * of these stable codes. Codes never change meaning; new ones may be added. The default message says
 * what to do; call sites may pass a more precise one.
 */
export const ErrorCodes = {
  // generic request errors
  invalid_json: { status: 400, message: 'The request body is not valid JSON.' },
  validation_failed: { status: 400, message: 'The request does not match the schema; see details.' },
  // 400 for a malformed URL; Node's HTTP parser also answers it with 408 (request head too slow) or 431
  // (request line and headers over the size limit).
  bad_request: {
    status: 400,
    message: 'The request is malformed (URL, request line or headers); fix it and send it again.',
  },
  body_too_large: { status: 413, message: 'The request body is larger than the configured limit.' },
  unsupported_media_type: { status: 415, message: 'Send the body as application/json.' },
  not_found: { status: 404, message: 'No such route or resource.' },
  method_not_allowed: { status: 405, message: 'This method is not allowed on this route.' },
  rate_limited: { status: 429, message: 'Too many requests; retry later.' },
  internal_error: { status: 500, message: 'Internal error; it has been logged.' },
  not_ready: {
    status: 503,
    message: 'The node is not ready (starting, shutting down or a dependency is down).',
  },
  shutting_down: { status: 503, message: 'The node is shutting down; retry on another node.' },
  store_unavailable: { status: 503, message: 'The durable store is unavailable; retry later.' },
  cluster_unavailable: {
    status: 503,
    message:
      'This node cannot reach Redis, so the notification would reach only its own sockets: it was delivered nowhere; retry later or on another node.',
  },
  overloaded: {
    status: 503,
    message: 'More payment events wait for the store on this node than PAYMENT_QUEUE_MAX; retry later.',
  },

  // identity and access
  unauthorized: { status: 401, message: 'Missing or invalid credentials.' },
  forbidden: { status: 403, message: 'These credentials do not grant access to this app.' },
  invalid_token: {
    status: 401,
    message: 'The token is missing, malformed, expired or not signed with the app secret.',
  },
  invalid_app_id: { status: 400, message: 'appId must be 1-64 characters of [A-Za-z0-9_.-].' },
  unknown_app: { status: 404, message: 'No such app is configured on this server.' },
  invalid_client_id: {
    status: 400,
    message: 'clientId must be 1-128 characters without control characters.',
  },
  invalid_device_id: {
    status: 400,
    message: 'deviceId must be 1-128 characters without control characters.',
  },

  too_many_connections: {
    status: 503,
    message:
      'This node holds as many connections as it may (MAX_CONNECTIONS), or this client id as many as one client may (MAX_CONNECTIONS_PER_CLIENT); close others or retry later.',
  },

  // topics and subscriptions
  invalid_topic: {
    status: 400,
    message: 'A topic is a string of 1-200 characters without whitespace or control characters.',
  },
  too_many_topics: { status: 400, message: 'Too many topics in one call.' },
  subscription_limit: { status: 400, message: 'This connection has reached its subscription limit.' },
  invalid_arguments: { status: 400, message: 'The event arguments are not valid.' },
  unknown_event: { status: 400, message: 'This event is not part of the protocol.' },

  // notify
  no_target: {
    status: 400,
    message: 'Give at least one of users, devices, eventTopics, or set broadcast: true.',
  },
  too_many_targets: { status: 400, message: 'A target list is longer than the configured limit.' },
  payload_too_large: { status: 413, message: 'The notification data is larger than the configured limit.' },
  batch_too_large: { status: 400, message: 'A batch holds at most the configured number of notifications.' },

  // merchant webhooks
  invalid_notify_url: {
    status: 400,
    message: 'notifyUrl must be an http(s) URL that does not point to a private or local address.',
  },
  not_retryable: {
    status: 409,
    message:
      'The webhook exists but was not sent again: it is being sent right now, was delivered, or lost its payload to retention (see details).',
  },

  // payments
  invalid_event: {
    status: 400,
    message: 'The payment event is not valid; see details, fix it and send it again.',
  },
  invalid_transition: {
    status: 409,
    message:
      'The order cannot move to this state from its current one; see details (when retryable, send the event again later).',
  },
  invalid_merchant_id: {
    status: 400,
    message: 'merchantId must be 1-128 characters without whitespace or control characters.',
  },
  device_offline: {
    status: 404,
    message: 'The device is not connected to this node; retry when it is online.',
  },
  command_timeout: {
    status: 504,
    message: 'The device did not answer the command in time; it may or may not have run it.',
  },
  invalid_reply: {
    status: 502,
    message: 'The device answered the command with a reply JSON cannot carry; it ran the command.',
  },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ErrorCodes;

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  details?: unknown;
}

/** An error with a stable code, safe to show to the caller. */
export class HeraldError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details?: unknown;

  constructor(code: ErrorCode, message?: string, details?: unknown) {
    super(message ?? ErrorCodes[code].message);
    this.name = 'HeraldError';
    this.code = code;
    this.status = ErrorCodes[code].status;
    this.details = details;
  }

  toBody(): ErrorBody {
    const body: ErrorBody = { code: this.code, message: this.message };
    if (this.details !== undefined) body.details = this.details;
    return body;
  }
}

export function isHeraldError(err: unknown): err is HeraldError {
  return err instanceof HeraldError;
}

/** The error of a publish that had to reach every node and could not (see PublishOptions.requireCluster). */
export function clusterUnavailable(cause?: unknown): HeraldError {
  const why = cause instanceof Error ? ` (${cause.message})` : '';
  return new HeraldError(
    'cluster_unavailable',
    `This node cannot reach Redis${why}: the notification was delivered nowhere, so that other nodes' clients do not miss it; retry later or on another node.`,
  );
}
