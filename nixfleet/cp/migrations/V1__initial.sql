-- V1__initial: the control plane's state DB (decisions.md; protocol.md §5).
--
-- Timestamps are TEXT. The CP writes RFC 3339 UTC ('2026-11-23T11:38:46Z'); SQLite
-- defaults and operator hand edits write 'YYYY-MM-DD HH:MM:SS'. Never compare them as
-- raw text (seed 000: 'T' sorts above ' '): the store parses both sides, or calls the
-- registered deadline_passed() / instant_before() functions.
--
-- Every table is soft state except cert_revocations (replayed from the signed
-- sidecar; operator rows are hard state). Wiping the DB is the documented recovery.

-- One row per dispatch. The newest row of a host (highest id) is its current dispatch;
-- older rows are history. The operator cookbook's stuck-agent query reads this table.
CREATE TABLE pending_confirms (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname            TEXT    NOT NULL,
    rollout_id          TEXT    NOT NULL,
    wave                INTEGER NOT NULL DEFAULT 0,
    target_closure_hash TEXT    NOT NULL,
    target_channel_ref  TEXT    NOT NULL,
    state               TEXT    NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'confirmed', 'rolled-back', 'cancelled',
                         'deferred-pending-reboot')),
    dispatched_at       TEXT    NOT NULL DEFAULT (datetime('now')),
    confirm_deadline    TEXT,
    confirmed_at        TEXT,
    -- History stamp: NULL while the dispatch is open.
    terminal_state      TEXT
        CHECK (terminal_state IS NULL
               OR terminal_state IN ('converged', 'converged-at-dispatch', 'rolled-back',
                                     'cancelled')),
    terminal_at         TEXT
);

CREATE INDEX pending_confirms_host ON pending_confirms (hostname, id);
CREATE INDEX pending_confirms_host_rollout ON pending_confirms (hostname, rollout_id, id);
CREATE INDEX pending_confirms_rollout ON pending_confirms (rollout_id);
CREATE INDEX pending_confirms_pending_deadline ON pending_confirms (confirm_deadline)
    WHERE state = 'pending';

-- Certificates of `hostname` whose notBefore is strictly earlier than `not_before` are
-- refused. The signed sidecar replay manages only source = 'sidecar' rows; rows an
-- operator inserts by hand (cookbook) default to source = 'operator' and survive polls.
CREATE TABLE cert_revocations (
    hostname   TEXT PRIMARY KEY NOT NULL,
    not_before TEXT NOT NULL DEFAULT (datetime('now')),
    reason     TEXT,
    revoked_by TEXT,
    revoked_at TEXT NOT NULL DEFAULT (datetime('now')),
    source     TEXT NOT NULL DEFAULT 'operator' CHECK (source IN ('operator', 'sidecar'))
);

-- Bootstrap-token nonces already used (409 on reuse); pruned after 24 h.
CREATE TABLE token_replay (
    nonce      TEXT PRIMARY KEY NOT NULL,
    hostname   TEXT NOT NULL,
    first_seen TEXT NOT NULL DEFAULT (datetime('now'))
);

-- One row per recorded rolloutId. Recording a new one for a channel supersedes the
-- previous one. current_wave only grows. Halted is stored (decisions.md).
CREATE TABLE rollouts (
    rollout_id    TEXT PRIMARY KEY NOT NULL,
    channel       TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (datetime('now')),
    superseded_at TEXT,
    superseded_by TEXT REFERENCES rollouts (rollout_id) ON DELETE SET NULL,
    current_wave  INTEGER NOT NULL DEFAULT 0 CHECK (current_wave >= 0),
    state         TEXT NOT NULL DEFAULT 'Executing'
        CHECK (state IN ('Planning', 'Executing', 'Halted')),
    terminal_at   TEXT
);

CREATE INDEX rollouts_channel ON rollouts (channel);

-- Participation rows. No foreign key to rollouts: orphan-confirm recovery (lifecycle
-- §4.5) and attestation (H15) may write one before the rollout is recorded again after
-- a wipe; the prune deletes them together with their rollout.
CREATE TABLE host_rollout_state (
    rollout_id         TEXT NOT NULL,
    hostname           TEXT NOT NULL,
    host_state         TEXT NOT NULL DEFAULT 'Dispatched'
        CHECK (host_state IN ('Queued', 'Dispatched', 'Activating', 'ConfirmWindow',
                              'Healthy', 'Soaked', 'Converged', 'Reverted', 'Failed')),
    last_healthy_since TEXT,
    updated_at         TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (rollout_id, hostname)
);

CREATE INDEX host_rollout_state_host ON host_rollout_state (hostname);

CREATE TABLE host_reports (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname         TEXT NOT NULL,
    event_id         TEXT NOT NULL UNIQUE,
    received_at      TEXT NOT NULL DEFAULT (datetime('now')),
    event_kind       TEXT NOT NULL,
    rollout          TEXT,
    signature_status TEXT,
    report_json      TEXT NOT NULL
);

CREATE INDEX host_reports_host ON host_reports (hostname, id);
CREATE INDEX host_reports_rollout ON host_reports (rollout, hostname);

-- A quarantine is active while cleared_at IS NULL.
CREATE TABLE quarantined_closures (
    channel        TEXT NOT NULL,
    closure_hash   TEXT NOT NULL,
    reason         TEXT,
    quarantined_at TEXT NOT NULL DEFAULT (datetime('now')),
    cleared_at     TEXT,
    PRIMARY KEY (channel, closure_hash)
);
