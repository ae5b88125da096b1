#!/usr/bin/env node
// End-to-end test driver for the official, unmodified @powersync/node client.
//
// A long-lived process controlling (at most) one PowerSyncDatabase. It reads
// JSON commands from stdin, one per line:
//
//   {"id": 1, "cmd": "open", "args": {"dbPath": "/tmp/x/client.db"}}
//
// and answers each with exactly one JSON line on stdout:
//
//   {"id": 1, "ok": true, "result": ...}
//   {"id": 1, "ok": false, "error": "..."}
//
// Commands run sequentially in arrival order unless sent with
// `"concurrent": true` (e.g. a long `sample` while other commands make
// changes), so replies may come out of order: match them by id. Nothing but replies is
// ever written to stdout; SDK log records go to an in-memory buffer (see the
// `logs` command) and are echoed to stderr for debugging.
//
// The Python side of this protocol is tests/e2e/node_client.py.

import { mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import * as readline from 'node:readline';

import {
  PowerSyncDatabase,
  Schema,
  Table,
  column,
  LogLevels,
  SyncStreamConnectionMethod
} from '@powersync/node';

// ---------------------------------------------------------------------------
// stdout discipline: keep the original writer for replies and route every
// console method to stderr, so that a stray console.log (from the SDK or a
// dependency) cannot corrupt the reply stream.

const writeStdout = process.stdout.write.bind(process.stdout);
for (const name of ['log', 'info', 'debug', 'trace', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

function reply(message) {
  writeStdout(JSON.stringify(message) + '\n');
}

// ---------------------------------------------------------------------------
// Log capture.

const LEVEL_NAMES = Object.fromEntries(Object.entries(LogLevels).map(([name, level]) => [level, name]));
const MAX_LOG_ENTRIES = 20000;

const logBuffer = [];
let droppedLogEntries = 0;

function describeError(error) {
  if (error == null) return null;
  if (error instanceof Error) {
    let text = `${error.name}: ${error.message}`;
    if (error.status != null) text += ` (status ${error.status})`;
    if (error.cause != null) text += ` [cause: ${describeError(error.cause)}]`;
    return text;
  }
  if (typeof error === 'string') return error;
  try {
    return JSON.stringify(error);
  } catch {
    return String(error);
  }
}

function levelName(level) {
  return LEVEL_NAMES[level] ?? String(level);
}

function parseLevel(level, fallback) {
  if (level == null) return fallback;
  if (typeof level === 'number') return level;
  const value = LogLevels[String(level).toLowerCase()];
  if (value == null) throw new Error(`unknown log level ${JSON.stringify(level)}`);
  return value;
}

// Records below this level are neither buffered nor echoed. `trace` includes
// every powersync_control() call with its full payload (i.e. each sync line),
// which is very verbose; `debug` is the default.
let minLogLevel = LogLevels.debug;

function capture(level, message, error, source = 'sdk') {
  if (level < minLogLevel) return;
  const entry = {
    time: new Date().toISOString(),
    level,
    levelName: levelName(level),
    source,
    message: String(message),
    error: describeError(error)
  };
  logBuffer.push(entry);
  if (logBuffer.length > MAX_LOG_ENTRIES) {
    logBuffer.shift();
    droppedLogEntries++;
  }
  process.stderr.write(
    `[${entry.time} ${entry.levelName.toUpperCase()} ${source}] ${entry.message}` +
      (entry.error ? ` -- ${entry.error}` : '') +
      '\n'
  );
}

// A PowerSyncLogger (the SDK's logger interface is a single `log(record)`
// method). It receives the SDK's own messages as well as the Rust core
// extension's log lines (which the sync client forwards with the core's
// severity mapped to debug/info/warn).
const captureLogger = {
  log(record) {
    capture(record.level, record.message, record.error);
  }
};

process.on('unhandledRejection', (reason) => {
  capture(LogLevels.error, 'unhandled promise rejection', reason, 'client.mjs');
});

// ---------------------------------------------------------------------------
// Schema of the demo app (the `id` column is implicit in PowerSync tables).
// `open` may pass another one as {table: {column: "text" | "integer" | "real"}}.

const demoSchema = new Schema({
  lists: new Table({
    name: column.text,
    owner_id: column.text,
    created_at: column.text
  }),
  todos: new Table({
    list_id: column.text,
    description: column.text,
    completed: column.integer,
    created_by: column.text,
    created_at: column.text,
    completed_at: column.text
  })
});

function schemaFromSpec(spec) {
  const tables = {};
  for (const [table, columns] of Object.entries(spec)) {
    const cols = {};
    for (const [name, type] of Object.entries(columns)) {
      if (!(type in column)) throw new Error(`unknown column type ${type} of ${table}.${name}`);
      cols[name] = column[type];
    }
    tables[table] = new Table(cols);
  }
  return new Schema(tables);
}

// ---------------------------------------------------------------------------
// State.

/** @type {import('@powersync/node').PowerSyncDatabase | null} */
let db = null;
let dbPath = null;
let disposeStatusListener = null;

const credentials = {
  endpoint: null,
  token: null,
  fetchCount: 0,
  // One entry per call of connector.invalidateCredentials() (the SDK calls it
  // e.g. on 401 responses, or when the core says the token expired).
  invalidations: []
};

// Sync Stream subscriptions made by `subscribeStream`, by handle (an integer).
const streamSubscriptions = new Map();
let nextStreamHandle = 1;

const uploadAttempts = []; // every uploadData() round trip
const uploadRejections = []; // 4xx answers (completed and dropped)
const statusHistory = [];
const MAX_STATUS_HISTORY = 2000;

function requireDb() {
  if (db == null) throw new Error('no database open (send `open` first)');
  return db;
}

function serializeStatus(status) {
  return {
    connected: status.connected,
    connecting: status.connecting,
    hasSynced: status.hasSynced ?? null,
    lastSyncedAt: status.lastSyncedAt ? status.lastSyncedAt.toISOString() : null,
    downloading: status.downloading,
    uploading: status.uploading,
    downloadError: describeError(status.downloadError),
    uploadError: describeError(status.uploadError),
    downloadProgress: status.downloadProgress
      ? {
          downloadedOperations: status.downloadProgress.downloadedOperations,
          totalOperations: status.downloadProgress.totalOperations
        }
      : null,
    priorityStatusEntries: (status.priorityStatusEntries ?? []).map((entry) => ({
      priority: entry.priority,
      hasSynced: entry.hasSynced ?? null,
      lastSyncedAt: entry.lastSyncedAt ? entry.lastSyncedAt.toISOString() : null
    })),
    message: status.getMessage()
  };
}

// The SDK builds stream dates from the core's microsecond timestamps as if they were seconds, which can
// give invalid Dates: report those as the raw number.
function dateText(date) {
  if (date == null) return null;
  return Number.isNaN(date.getTime()) ? String(date.valueOf()) : date.toISOString();
}

function serializeStreamStatus(status) {
  if (status == null) return null;
  const sub = status.subscription;
  return {
    name: sub.name,
    parameters: sub.parameters ?? null,
    active: sub.active,
    isDefault: sub.isDefault,
    hasExplicitSubscription: sub.hasExplicitSubscription,
    hasSynced: sub.hasSynced,
    expiresAt: dateText(sub.expiresAt),
    lastSyncedAt: dateText(sub.lastSyncedAt),
    priority: status.priority ?? null,
    progress: status.progress
      ? {
          downloadedOperations: status.progress.downloadedOperations,
          totalOperations: status.progress.totalOperations
        }
      : null
  };
}

function stripTrailingSlash(url) {
  // The SDK rejects endpoints with a trailing slash ("A trailing forward slash
  // ... was found in the fetchCredentials endpoint").
  return String(url).replace(/\/+$/, '');
}

// ---------------------------------------------------------------------------
// Backend connector.

function createConnector({ uploadPath }) {
  return {
    async fetchCredentials() {
      credentials.fetchCount++;
      if (credentials.token == null) return null; // "not signed in"
      return { endpoint: credentials.endpoint, token: credentials.token };
    },

    // Not part of the declared PowerSyncBackendConnector type, but the SDK
    // calls `connector.invalidateCredentials?.()` when it drops its cached
    // credentials.
    invalidateCredentials() {
      credentials.invalidations.push({ time: new Date().toISOString() });
      capture(LogLevels.debug, 'connector.invalidateCredentials() called', null, 'connector');
    },

    async uploadData(database) {
      const tx = await database.getNextCrudTransaction();
      if (tx == null) return;
      const batch = tx.crud.map((entry) => entry.toJSON());
      const url = `${credentials.endpoint}${uploadPath}`;
      const attempt = {
        time: new Date().toISOString(),
        transactionId: tx.transactionId ?? null,
        ops: batch.length,
        status: null,
        outcome: null
      };
      uploadAttempts.push(attempt);

      let response;
      let body;
      try {
        response = await fetch(url, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            Authorization: `Token ${credentials.token}`
          },
          body: JSON.stringify({ batch })
        });
        body = await response.text();
      } catch (error) {
        attempt.outcome = 'network-error';
        attempt.error = describeError(error);
        // Thrown errors make the SDK retry after retryDelayMs.
        throw error;
      }

      attempt.status = response.status;
      if (response.ok) {
        attempt.outcome = 'ok';
        await tx.complete();
      } else if (response.status >= 400 && response.status < 500) {
        // Permanent rejection: record it and drop the transaction, otherwise
        // the upload queue would be stuck on it forever.
        attempt.outcome = 'rejected';
        uploadRejections.push({
          time: attempt.time,
          status: response.status,
          body,
          transactionId: attempt.transactionId,
          batch
        });
        capture(LogLevels.warn, `upload rejected with HTTP ${response.status}: ${body}`, null, 'connector');
        await tx.complete();
      } else {
        attempt.outcome = 'server-error';
        throw new Error(`upload failed with HTTP ${response.status}: ${body}`);
      }
    }
  };
}

// ---------------------------------------------------------------------------
// Helpers.

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Rows coming out of SQLite are plain objects, but normalize through JSON so
// that the comparison matches what the Python side sees.
function normalize(value) {
  return JSON.parse(JSON.stringify(value ?? null));
}

async function getAll(sql, params) {
  return normalize(await requireDb().getAll(sql, params ?? []));
}

// ---------------------------------------------------------------------------
// Commands.

const commands = {
  async ping() {
    return { pong: true, pid: process.pid, node: process.version };
  },

  async open({ dbPath: requestedPath, logLevel, readWorkerCount, schema: schemaSpec, schemaModule }) {
    if (db != null) throw new Error(`a database is already open (${dbPath})`);
    if (!requestedPath) throw new Error('dbPath is required');
    minLogLevel = parseLevel(logLevel, LogLevels.debug);
    const absolute = path.resolve(requestedPath);
    mkdirSync(path.dirname(absolute), { recursive: true });
    // schemaModule: a compiled module exporting `AppSchema` (what `manage.py powersync_schema` generates).
    const schema = schemaModule
      ? (await import(pathToFileURL(path.resolve(schemaModule)).href)).AppSchema
      : schemaSpec
        ? schemaFromSpec(schemaSpec)
        : demoSchema;
    if (schema == null) throw new Error(`${schemaModule} does not export AppSchema`);
    const database = new PowerSyncDatabase({
      schema,
      logger: captureLogger,
      database: {
        dbFilename: path.basename(absolute),
        dbLocation: path.dirname(absolute),
        ...(readWorkerCount != null ? { readWorkerCount } : {})
      }
    });
    await database.init();
    db = database;
    dbPath = absolute;
    disposeStatusListener = db.registerListener({
      statusChanged(status) {
        statusHistory.push({
          time: new Date().toISOString(),
          ...serializeStatus(status),
          streams: (status.syncStreams ?? []).map(serializeStreamStatus)
        });
        if (statusHistory.length > MAX_STATUS_HISTORY) statusHistory.shift();
      }
    });
    return { dbPath: absolute, sdkVersion: db.sdkVersion, clientId: await db.getClientId() };
  },

  async connect({
    endpoint,
    token,
    connectionMethod = 'http',
    params,
    appMetadata,
    retryDelayMs = 300,
    crudUploadThrottleMs = 50,
    uploadPath = '/api/upload',
    timeoutMs = 10000,
    // Any other SyncOptions (e.g. checkpointMode, fetchStrategy, includeDefaultStreams), passed as is.
    extraOptions = {}
  }) {
    const database = requireDb();
    if (!endpoint) throw new Error('endpoint is required');
    let method;
    if (connectionMethod === 'http') method = SyncStreamConnectionMethod.HTTP;
    else if (connectionMethod === 'websocket' || connectionMethod === 'web-socket') {
      method = SyncStreamConnectionMethod.WEB_SOCKET;
    } else throw new Error(`unknown connectionMethod ${JSON.stringify(connectionMethod)}`);

    credentials.endpoint = stripTrailingSlash(endpoint);
    credentials.token = token ?? null;

    // db.connect() resolves once the first connection attempt either
    // succeeded or failed (the SDK keeps retrying in the background after a
    // failure). It can hang if the server accepts the request but never
    // answers, hence the timeout: on timeout we just report the status.
    const connecting = database.connect(createConnector({ uploadPath }), {
      connectionMethod: method,
      params: params ?? {},
      appMetadata,
      retryDelayMs,
      crudUploadThrottleMs,
      ...extraOptions
    });
    let timer;
    const settledInTime = await Promise.race([
      connecting.then(() => true),
      new Promise((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
      })
    ]);
    clearTimeout(timer);
    return { settled: settledInTime, status: serializeStatus(database.currentStatus) };
  },

  async setToken({ token }) {
    // Takes effect the next time the SDK fetches credentials (it caches them
    // until they are invalidated, e.g. by a 401 or a reconnect).
    credentials.token = token ?? null;
    return null;
  },

  async credentials({ clear = false } = {}) {
    const result = {
      endpoint: credentials.endpoint,
      token: credentials.token,
      fetchCount: credentials.fetchCount,
      invalidations: [...credentials.invalidations]
    };
    if (clear) {
      credentials.fetchCount = 0;
      credentials.invalidations.length = 0;
    }
    return result;
  },

  async invalidations({ clear = false } = {}) {
    const result = [...credentials.invalidations];
    if (clear) credentials.invalidations.length = 0;
    return result;
  },

  async waitForFirstSync({ timeoutMs = 30000, priority } = {}) {
    const database = requireDb();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const started = Date.now();
    try {
      // Resolves on the first complete sync, or (without throwing) on abort.
      await database.waitForFirstSync(
        priority != null ? { signal: controller.signal, priority } : controller.signal
      );
    } finally {
      clearTimeout(timer);
    }
    const status = database.currentStatus;
    const synced =
      priority != null ? status.statusForPriority(priority)?.hasSynced === true : status.hasSynced === true;
    return { synced, elapsedMs: Date.now() - started, status: serializeStatus(status) };
  },

  // db.requestCheckpoint() (needs connect with checkpointMode 'requests'), then its waitForSync(): resolves once
  // a checkpoint containing every server change committed before the request is applied locally.
  async requestCheckpoint({ timeoutMs = 15000 } = {}) {
    const database = requireDb();
    const request = await database.requestCheckpoint();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Error(`not synced within ${timeoutMs} ms`)), timeoutMs);
    try {
      await request.waitForSync({ signal: controller.signal });
    } finally {
      clearTimeout(timer);
    }
    return { requestId: String(request.requestId), hasSynced: request.hasSynced };
  },

  async status() {
    return serializeStatus(requireDb().currentStatus);
  },

  // --- Sync Streams -------------------------------------------------------
  // db.syncStream(name, params).subscribe({ttl, priority}); answers a handle for the other commands.
  async subscribeStream({ name, params, ttl, priority }) {
    const options = {};
    if (ttl != null) options.ttl = ttl;
    if (priority != null) options.priority = priority;
    const subscription = await requireDb().syncStream(name, params ?? undefined).subscribe(options);
    const handle = nextStreamHandle++;
    streamSubscriptions.set(handle, subscription);
    return { handle };
  },

  async unsubscribeStream({ handle }) {
    const subscription = streamSubscriptions.get(handle);
    if (subscription == null) throw new Error(`unknown stream subscription handle ${handle}`);
    subscription.unsubscribe();
    streamSubscriptions.delete(handle);
    return null;
  },

  // subscription.waitForFirstSync(), bounded by timeoutMs: {synced, elapsedMs}.
  async waitForStreamFirstSync({ handle, timeoutMs = 30000 }) {
    const subscription = streamSubscriptions.get(handle);
    if (subscription == null) throw new Error(`unknown stream subscription handle ${handle}`);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const started = Date.now();
    let synced = true;
    try {
      await subscription.waitForFirstSync(controller.signal);
    } catch (error) {
      if (!controller.signal.aborted) throw error;
      synced = false;
    } finally {
      clearTimeout(timer);
    }
    if (controller.signal.aborted) synced = false;
    return { synced, elapsedMs: Date.now() - started };
  },

  // currentStatus.forStream({name, parameters}) (null when the stream is not tracked).
  async streamStatus({ name, params }) {
    return serializeStreamStatus(requireDb().currentStatus.forStream({ name, parameters: params ?? null }));
  },

  // currentStatus.syncStreams: every tracked stream subscription.
  async syncStreams() {
    return (requireDb().currentStatus.syncStreams ?? []).map(serializeStreamStatus);
  },

  async statusHistory({ clear = false } = {}) {
    const result = [...statusHistory];
    if (clear) statusHistory.length = 0;
    return result;
  },

  async query({ sql, params }) {
    return getAll(sql, params);
  },

  async execute({ sql, params }) {
    const result = await requireDb().execute(sql, params ?? []);
    return { rowsAffected: result.rowsAffected ?? null, insertId: result.insertId ?? null };
  },

  // Runs several statements in one write transaction, i.e. one CRUD
  // transaction (one upload batch).
  async writeTransaction({ statements }) {
    return requireDb().writeTransaction(async (tx) => {
      const results = [];
      for (const { sql, params } of statements) {
        const result = await tx.execute(sql, params ?? []);
        results.push({ rowsAffected: result.rowsAffected ?? null, insertId: result.insertId ?? null });
      }
      return results;
    });
  },

  async waitFor({ sql, params, expected, timeoutMs = 10000, intervalMs = 50 }) {
    const started = Date.now();
    const want = normalize(expected);
    let rows;
    for (;;) {
      rows = await getAll(sql, params);
      if (isDeepStrictEqual(rows, want)) {
        return { matched: true, rows, elapsedMs: Date.now() - started };
      }
      if (Date.now() - started >= timeoutMs) {
        return { matched: false, rows, elapsedMs: Date.now() - started };
      }
      await sleep(intervalMs);
    }
  },

  // Takes a snapshot of the query every intervalMs for durationMs and, with
  // onChange (default), additionally right after every change notification of
  // the database (which catches short-lived states between two polls).
  // Returns the snapshots in order; with dedupe, consecutive equal snapshots
  // are collapsed into one.
  async sample({ sql, params, durationMs = 1000, intervalMs = 20, onChange = true, dedupe = false, tables }) {
    const database = requireDb();
    const snapshots = [];
    let chain = Promise.resolve();
    const take = () => {
      // Serialize the snapshot queries so they are recorded in order.
      chain = chain.then(async () => {
        const rows = await getAll(sql, params);
        if (dedupe && snapshots.length && isDeepStrictEqual(snapshots[snapshots.length - 1], rows)) return;
        snapshots.push(rows);
      });
      return chain;
    };
    // onChange only reports tables it is told about: derive them from the
    // query like db.watch() does (unless given explicitly).
    const watchedTables = onChange ? (tables ?? (await database.resolveTables(sql, params ?? []))) : [];
    const disposeOnChange = onChange
      ? database.onChange({ onChange: () => take() }, { tables: watchedTables, throttleMs: 0 })
      : null;
    try {
      const end = Date.now() + durationMs;
      while (Date.now() < end) {
        await take();
        await sleep(Math.min(intervalMs, Math.max(0, end - Date.now())));
      }
      await take();
    } finally {
      disposeOnChange?.();
    }
    await chain;
    return snapshots;
  },

  async uploadRejections({ clear = false } = {}) {
    const result = [...uploadRejections];
    if (clear) uploadRejections.length = 0;
    return result;
  },

  async uploads({ clear = false } = {}) {
    const result = uploadAttempts.map((attempt) => ({ ...attempt }));
    if (clear) uploadAttempts.length = 0;
    return result;
  },

  async crudCount() {
    return (await requireDb().getUploadQueueStats()).count;
  },

  async logs({ clear = false, minLevel, contains } = {}) {
    const threshold = parseLevel(minLevel, 0);
    const needle = contains == null ? null : String(contains).toLowerCase();
    const entries = logBuffer.filter(
      (entry) =>
        entry.level >= threshold &&
        (needle == null ||
          entry.message.toLowerCase().includes(needle) ||
          (entry.error ?? '').toLowerCase().includes(needle))
    );
    const result = { entries, dropped: droppedLogEntries };
    if (clear) {
      logBuffer.length = 0;
      droppedLogEntries = 0;
    }
    return result;
  },

  async disconnect() {
    await requireDb().disconnect();
    return serializeStatus(db.currentStatus);
  },

  async disconnectAndClear({ clearLocal = true } = {}) {
    await requireDb().disconnectAndClear({ clearLocal });
    return null;
  },

  async close() {
    if (db == null) return null;
    disposeStatusListener?.();
    disposeStatusListener = null;
    const database = db;
    db = null;
    dbPath = null;
    await database.close();
    return null;
  },

  // Closes the database (if open), answers, then exits the process.
  async exit() {
    await commands.close();
    setImmediate(() => process.exit(0));
    return null;
  }
};

// ---------------------------------------------------------------------------
// Main loop.

async function handleLine(line) {
  if (!line.trim()) return;
  let message;
  try {
    message = JSON.parse(line);
  } catch (error) {
    reply({ id: null, ok: false, error: `invalid JSON command: ${describeError(error)}` });
    return;
  }
  const { id = null, cmd, args = {} } = message;
  const handler = Object.hasOwn(commands, cmd) ? commands[cmd] : null;
  if (handler == null) {
    reply({ id, ok: false, error: `unknown command ${JSON.stringify(cmd)}` });
    return;
  }
  try {
    const result = await handler(args ?? {});
    reply({ id, ok: true, result: result ?? null });
  } catch (error) {
    reply({ id, ok: false, error: describeError(error) ?? 'unknown error' });
  }
}

// Commands run one after the other in arrival order, so that a client piping
// several commands at once gets predictable results. A command sent with
// `"concurrent": true` bypasses that queue and runs immediately (e.g. a
// `sample` that should observe the effect of commands sent after it).
let queue = Promise.resolve();
const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', (line) => {
  let concurrent = false;
  try {
    concurrent = JSON.parse(line)?.concurrent === true;
  } catch {
    // handleLine reports the parse error.
  }
  if (concurrent) {
    void handleLine(line);
  } else {
    queue = queue.then(() => handleLine(line));
  }
});
input.on('close', async () => {
  // stdin closed (the controlling process went away): finish the queued
  // commands, then shut down cleanly.
  await queue;
  try {
    await commands.close();
  } catch (error) {
    capture(LogLevels.error, 'error closing database on stdin EOF', error, 'client.mjs');
  }
  process.exit(0);
});
