"""The PostgreSQL store's schema, its versioned migrations and how they are applied, and the
statements of the store that depend on the schema's shape.

Each entry of :data:`MIGRATIONS` moves the schema one version up; the version reached is kept
in ``schema_version``, as the SQLite store does. :func:`migrate` runs every missing step in one
transaction under an advisory lock, so that nodes starting at once against the same database
do not race (the second waits, then finds the schema current). A database whose schema is
newer than this program is refused (:class:`SchemaTooNew`), naming both versions.

Tables live in the first schema of the connection's ``search_path`` (``public`` unless the
URL says ``?options=-csearch_path%3Dname``). Identifiers that lists are ordered by are
``COLLATE "C"``: code-point order, as the store contract promises, whatever the database's
locale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mdmgate.storage import StoreError
from mdmgate.storage.pgwire import Connection, Param

__all__ = [
    "CHANGE_LOCK",
    "CHANNEL",
    "EVENT_LOCK",
    "MIGRATE_LOCK",
    "MIGRATIONS",
    "REFUSED_LICENCES",
    "REFUSED_NOTHING",
    "REFUSED_REVISION",
    "REFUSED_UNKNOWN",
    "SchemaTooNew",
    "Statement",
    "grant",
    "logged",
    "migrate",
    "put_notification",
    "queue",
    "text_array",
]

#: Advisory lock keys (``pg_advisory_xact_lock``): schema migrations, the change log and the
#: event log (each held from an insert into its log to the commit, so that ``seq`` is in
#: commit order). A transaction that writes both takes CHANGE_LOCK first.
MIGRATE_LOCK = 0x6D646D_6D696772  # "mdm" "migr"
CHANGE_LOCK = 0x6D646D_63686E67  # "mdm" "chng"
EVENT_LOCK = 0x6D646D_65766E74  # "mdm" "evnt"
#: The LISTEN/NOTIFY channel a change-writing transaction notifies (payload: its last seq),
#: in the public schema; ``mdmgate_changes:<schema>`` in another (``mdmgate_channel()``).
CHANNEL = "mdmgate_changes"

#: SQLSTATEs raised by ``mdmgate_refuse`` to abort a pipelined transaction from inside.
REFUSED_UNKNOWN = "MG001"  # detail: the unknown device ids, a JSON array
REFUSED_LICENCES = "MG002"  # detail: the licences the pool would have to hold
REFUSED_REVISION = "MG003"  # a compare-and-set found another revision
REFUSED_NOTHING = "MG004"  # nothing to change (a final delivery, an unknown device)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE devices (
        id text COLLATE "C" PRIMARY KEY,
        platform text NOT NULL,
        org text NOT NULL,
        os_version text,
        supervised boolean,
        auth jsonb NOT NULL DEFAULT '{}',
        facts jsonb NOT NULL DEFAULT '{}'
    );
    CREATE TABLE commands (
        id text COLLATE "C" PRIMARY KEY,
        kind text NOT NULL,
        body bytea NOT NULL,
        created timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE deliveries (
        seq bigserial PRIMARY KEY,
        command_id text COLLATE "C" NOT NULL REFERENCES commands (id),
        device_id text COLLATE "C" NOT NULL REFERENCES devices (id),
        state text NOT NULL,
        session text,
        status text,
        result bytea,
        offers integer NOT NULL DEFAULT 0,
        updated timestamptz NOT NULL DEFAULT now(),
        UNIQUE (command_id, device_id)
    );
    CREATE INDEX deliveries_by_device ON deliveries (device_id, seq);
    -- What take() hands out, cancel_open() ends and queue_depth() counts.
    CREATE INDEX deliveries_open ON deliveries (device_id, seq)
        WHERE state IN ('queued', 'sent', 'not_now', 'accepted');

    CREATE TABLE declarations (
        seq bigserial PRIMARY KEY,
        identifier text COLLATE "C" NOT NULL UNIQUE,
        type text NOT NULL,
        payload json NOT NULL,
        server_token text NOT NULL
    );
    CREATE TABLE declaration_targets (
        identifier text COLLATE "C" NOT NULL
            REFERENCES declarations (identifier) ON DELETE CASCADE,
        kind text NOT NULL CHECK (kind IN ('device', 'org')),
        target text COLLATE "C" NOT NULL,
        pos integer NOT NULL,
        PRIMARY KEY (identifier, kind, target)
    );
    CREATE INDEX declaration_targets_by_target ON declaration_targets (kind, target);

    -- The app catalogue: apps, orgs and notifications are JSON documents (msgspec) with the
    -- columns their queries need beside them; licences grow with the fleet, so they are
    -- rows, and each app's pool has a row that grants lock before counting.
    CREATE TABLE apps (
        id text COLLATE "C" PRIMARY KEY,
        rev integer NOT NULL,
        doc json NOT NULL
    );
    CREATE TABLE orgs (
        path text COLLATE "C" PRIMARY KEY,
        doc json NOT NULL
    );
    CREATE TABLE licence_pools (
        app_id text COLLATE "C" PRIMARY KEY
    );
    CREATE TABLE licences (
        app_id text COLLATE "C" NOT NULL,
        device_id text COLLATE "C" NOT NULL REFERENCES devices (id),
        PRIMARY KEY (app_id, device_id)
    );
    CREATE TABLE notifications (
        id text COLLATE "C" PRIMARY KEY,
        app_id text COLLATE "C" NOT NULL,
        state text NOT NULL,
        due_at float8 NOT NULL,
        created_at float8 NOT NULL,
        rev integer NOT NULL,
        doc json NOT NULL
    );
    CREATE INDEX notifications_by_app ON notifications (app_id, created_at, id);
    CREATE INDEX notifications_by_created ON notifications (created_at, id);
    CREATE INDEX notifications_due ON notifications (due_at, created_at, id)
        WHERE state IN ('scheduled', 'running');

    CREATE TABLE sessions (
        kind text NOT NULL,
        key text NOT NULL,
        state bytea NOT NULL,
        rev integer NOT NULL,
        expires_at float8 NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);

    -- Written in the transaction of the change itself, under CHANGE_LOCK: seq is in commit
    -- order, so a reader that has seen seq N has seen every change below it.
    CREATE TABLE changes (
        seq bigserial PRIMARY KEY,
        kind text NOT NULL,
        key text NOT NULL
    );

    CREATE TABLE leases (
        name text COLLATE "C" PRIMARY KEY,
        holder text NOT NULL,
        until float8 NOT NULL
    );

    -- The LISTEN/NOTIFY channel of the change feed. Channels are per database, so a schema
    -- other than public (several mdmgate databases in one) has its own.
    CREATE FUNCTION mdmgate_channel() RETURNS text LANGUAGE sql STABLE AS $$
        SELECT CASE current_schema() WHEN 'public' THEN 'mdmgate_changes'
               ELSE left('mdmgate_changes:' || current_schema(), 63) END
    $$;

    -- Aborts the statement (and so the pipelined transaction) with an mdmgate SQLSTATE.
    CREATE FUNCTION mdmgate_refuse(code text, detail text) RETURNS integer
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = 'refused by mdmgate', DETAIL = detail;
    END
    $$;
    """,
    # Enrollment: the CA's material, enrollment tokens, the certificates the CA issued and
    # one-time claims (mdmgate.storage.postgres_enrollment).
    """
    CREATE TABLE enrollment_material (
        name text COLLATE "C" PRIMARY KEY,
        value bytea NOT NULL
    );
    CREATE TABLE enrollment_tokens (
        id text COLLATE "C" PRIMARY KEY,
        org text COLLATE "C" NOT NULL,
        secret_sha256 text NOT NULL,
        created_at float8 NOT NULL,
        expires_at float8 NOT NULL,
        max_uses bigint,
        uses bigint NOT NULL,
        revoked_at float8,
        platforms text[] NOT NULL,
        description text NOT NULL
    );
    CREATE INDEX enrollment_tokens_by_org ON enrollment_tokens (org, created_at);
    -- Listed by (digits, serial): for canonical serials (lower-case hex without leading
    -- zeros) the order of the numbers.
    CREATE TABLE certificates (
        serial text COLLATE "C" PRIMARY KEY,
        sha256 text COLLATE "C" NOT NULL CONSTRAINT certificates_sha256_key UNIQUE,
        subject text NOT NULL,
        org text COLLATE "C" NOT NULL,
        platform text NOT NULL,
        issued_at float8 NOT NULL,
        not_after float8 NOT NULL,
        der bytea NOT NULL,
        token_id text COLLATE "C",
        device_id text COLLATE "C",
        renews text COLLATE "C",
        revoked_at float8,
        revocation_reason text,
        digits integer GENERATED ALWAYS AS (length(serial)) STORED
    );
    CREATE INDEX certificates_in_order ON certificates (digits, serial);
    CREATE INDEX certificates_by_device ON certificates (device_id, digits, serial)
        WHERE device_id IS NOT NULL;
    CREATE TABLE claims (
        kind text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        until float8 NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX claims_by_expiry ON claims (until);
    """,
    # The event log, webhooks and API tokens (mdmgate.storage.postgres_events), and the
    # queue order of commands: those stored before are numbered in the order first queued.
    """
    -- Numbered under EVENT_LOCK, held from the insert to the commit: seq is in commit order.
    CREATE TABLE events (
        seq bigserial PRIMARY KEY,
        type text COLLATE "C" NOT NULL,
        at float8 NOT NULL,
        device_id text COLLATE "C",
        subject text,
        data jsonb NOT NULL
    );
    CREATE INDEX events_by_device ON events (device_id, seq) WHERE device_id IS NOT NULL;
    CREATE INDEX events_by_age ON events (at);
    -- The LISTEN/NOTIFY channel of the event log (payload: the last seq appended).
    CREATE FUNCTION mdmgate_events_channel() RETURNS text LANGUAGE sql STABLE AS $$
        SELECT CASE current_schema() WHEN 'public' THEN 'mdmgate_events'
               ELSE left('mdmgate_events:' || current_schema(), 63) END
    $$;
    CREATE TABLE webhooks (
        id text COLLATE "C" PRIMARY KEY,
        url text NOT NULL,
        secret text NOT NULL,
        -- A JSON array of event types.
        types text NOT NULL,
        created_at float8 NOT NULL,
        description text NOT NULL,
        cursor bigint NOT NULL,
        state text NOT NULL,
        attempts bigint NOT NULL,
        next_attempt_at float8 NOT NULL,
        last_error text,
        last_success_at float8
    );
    CREATE TABLE webhook_failures (
        webhook_id text COLLATE "C" NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        seq bigint NOT NULL,
        at float8 NOT NULL,
        attempts bigint NOT NULL,
        error text NOT NULL,
        PRIMARY KEY (webhook_id, seq)
    );
    CREATE TABLE api_tokens (
        id text COLLATE "C" PRIMARY KEY,
        name text COLLATE "C" NOT NULL,
        scope text NOT NULL,
        secret_sha256 text NOT NULL,
        created_at float8 NOT NULL,
        revoked_at float8,
        last_used_at float8
    );
    CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
    ALTER TABLE commands ADD COLUMN seq bigint;
    CREATE SEQUENCE commands_seq_seq OWNED BY commands.seq;
    UPDATE commands c SET seq = o.n FROM (
        SELECT id, row_number() OVER (ORDER BY created, id) AS n FROM commands
    ) o WHERE c.id = o.id;
    SELECT setval('commands_seq_seq', coalesce(max(seq), 0) + 1, false) FROM commands;
    ALTER TABLE commands ALTER COLUMN seq SET DEFAULT nextval('commands_seq_seq'),
        ALTER COLUMN seq SET NOT NULL;
    CREATE UNIQUE INDEX commands_in_order ON commands (seq);
    """,
    """
    -- What take() may give up on: without it, every check-in walked the device's whole
    -- queue of fresh commands (offers = 0) to find none.
    CREATE INDEX deliveries_retried ON deliveries (device_id, seq)
        WHERE state IN ('queued', 'sent', 'not_now') AND offers > 0;
    -- A take walks deliveries_open in queue order (seq + 0, see QUEUE_ORDER) and stops at
    -- the first. No other index has that order, so no plan can walk the device's answered
    -- history (deliveries_by_device in seq) or every device's (the primary key) instead.
    DROP INDEX deliveries_by_device;
    CREATE INDEX deliveries_by_device ON deliveries (device_id);
    DROP INDEX deliveries_open;
    CREATE INDEX deliveries_open ON deliveries (device_id, (seq + 0))
        WHERE state IN ('queued', 'sent', 'not_now', 'accepted');
    """,
)


class SchemaTooNew(StoreError, RuntimeError):
    """The database was migrated by a newer mdmgate than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this mdmgate ({known}): "
            "upgrade mdmgate, or point it at another database"
        )
        self.found = found
        self.known = known


async def migrate(conn: Connection) -> int:
    """Brings the schema to the newest version, under the migration lock; the version found."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1::int8)", MIGRATE_LOCK)
        await conn.execute_script(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
        )
        found = await conn.fetchval("SELECT max(version) FROM schema_version")
        current = int(found) if isinstance(found, int) else 0
        if current > len(MIGRATIONS):
            raise SchemaTooNew(current, len(MIGRATIONS))
        if current < len(MIGRATIONS):
            for script in MIGRATIONS[current:]:
                await conn.execute_script(script)
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version VALUES ($1)", len(MIGRATIONS))
    return current


# --- statements ------------------------------------------------------------------------------
# The SQL the store sends, where it is more than a line: built once, prepared per connection.
# Parameters are text, bigint, float8, bool or bytea; lists of ids travel as one ``text[]``
# literal (:func:`text_array`), records as one JSON document.

#: A statement and its parameters, as ``Connection.pipeline`` takes them.
Statement = tuple[str, Sequence[Param]]

#: What take() hands out; also what it gives up on.
OFFERED = "('queued', 'sent', 'not_now')"


#: A device's queue order as only deliveries_open has it. The planner picks paths by
#: statistics, and those of a deep queue are stale as soon as it is worked through: given
#: ``ORDER BY seq``, it would as soon walk the primary key over every answered delivery.
QUEUE_ORDER = "seq + 0"


def first_offered(conditions: str = "") -> str:
    """Whether the device $1 has a delivery take() may look at (``conditions``: more, each
    ``AND ...``), as a walk of deliveries_open that stops at the first (not EXISTS, which
    leaves the planner free to scan the table)."""
    return (
        f"(SELECT seq FROM deliveries WHERE device_id = $1 AND state IN {OFFERED}{conditions}"
        f" ORDER BY {QUEUE_ORDER} LIMIT 1) IS NOT NULL"
    )


#: Whether take() has anything to look at.
HAS_OFFERED = f"SELECT {first_offered()}"
#: Not yet answered for good: also what the device accepted and will report on later.
OPEN = "('queued', 'sent', 'not_now', 'accepted')"
FINAL = "('acknowledged', 'error', 'failed')"
#: Notifications still to run (the partial index notifications_due covers these).
PENDING = "('scheduled', 'running')"
#: Neither what this session was already given nor what the device deferred (NotNow) in it.
NOT_IN_SESSION = "NOT (state IN ('sent', 'not_now') AND session IS NOT DISTINCT FROM $2)"


def text_array(values: Iterable[str]) -> str:
    """A ``text[]`` literal, for ``$n::text[]``."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def logged(write: str, kind: str, order: str | None = None) -> str:
    """``write`` (a data-modifying statement ``RETURNING ... AS key``) with a change of
    ``kind`` for each distinct key it returns, and one notification. The changes are
    numbered under CHANGE_LOCK, taken only now and held to the commit (in the order of the
    keys in ``order``, a ``text[]`` expression, when given). Returns one row (the number of
    rows written) when anything was written, else none."""
    keys = "SELECT key, 0::int8 AS n FROM written GROUP BY key"
    if order is not None:
        keys = (
            "SELECT w.key, o.n FROM (SELECT DISTINCT key FROM written) w"
            f" JOIN unnest({order}) WITH ORDINALITY AS o(key, n) USING (key)"
        )
    return (
        f"WITH written AS ({write}),"
        f" ordered AS (SELECT pg_advisory_xact_lock({CHANGE_LOCK})"
        "  WHERE EXISTS (SELECT FROM written)),"
        f" logged AS (INSERT INTO changes (kind, key) SELECT '{kind}', k.key"
        f"  FROM ({keys}) k, ordered ORDER BY k.n RETURNING seq)"
        " SELECT (SELECT count(*) FROM written), pg_notify(mdmgate_channel(), max(seq)::text)"
        " FROM logged HAVING count(*) > 0"
    )


#: Aborts the transaction, naming the unknown ids (in the order given), if any of $1 is.
REFUSE_UNKNOWN = (
    f"SELECT mdmgate_refuse('{REFUSED_UNKNOWN}', json_agg(u.id ORDER BY u.n)::text)"
    " FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n)"
    " WHERE NOT EXISTS (SELECT FROM devices d WHERE d.id = u.id) HAVING count(*) > 0"
)
INSERT_COMMAND = "INSERT INTO commands (id, kind, body) VALUES ($1, $2, $3)"
QUEUE = (
    "INSERT INTO deliveries (command_id, device_id, state)"
    " SELECT $1, u.id, 'queued' FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n) ORDER BY u.n"
    " ON CONFLICT (command_id, device_id) DO NOTHING"
)


def queue(command_id: str, kind: str, body: bytes, ids: Iterable[str]) -> list[Statement]:
    """Store the command once (the body first stored is kept) and queue it for ``ids``."""
    return [
        (INSERT_COMMAND + " ON CONFLICT (id) DO NOTHING", (command_id, kind, body)),
        (QUEUE, (command_id, text_array(ids))),
    ]


#: First in a take's transaction, for the statements after it: planned once per
#: connection. Left to choose, the server planned them anew on every call (their custom
#: plans look cheaper than the generic one), which cost it more CPU than the rest of an
#: exchange. And no hash or merge joins: with LIMIT a parameter, or statistics that lag,
#: hashing the whole table to update the one delivery handed out could look as cheap as
#: its lookup by key. (Turning sorts and sequential scans off too made every exchange scan.)
TAKE_PLANS: Statement = (
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true),"
    + ",".join(f" set_config('enable_{path}', 'off', true)" for path in ("hashjoin", "mergejoin")),
    (),
)
#: The device's queue, locked to the commit: takes of one device run one after the other.
TAKE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('device:' || $1, 0))"


def retry_spent(n: str) -> str:
    """Offered ``n`` times (a parameter, at least 1) and never answered. ``offers > 0``,
    implied, is what lets the planner use deliveries_retried."""
    return f"state IN {OFFERED} AND offers > 0 AND offers >= {n}"


#: Given up: offered $5 times and never answered ($3 || offers || $4: the status).
GIVE_UP = (
    "UPDATE deliveries SET state = 'failed', status = $3::text || offers::text || $4::text,"
    f" updated = now() WHERE device_id = $1 AND {retry_spent('$5')}"
    f" AND {NOT_IN_SESSION}"
)


#: How take() chooses among what is ``offered`` (in queue order) and hands it out.
_TAKE_CHOSEN = (
    # With a cap ($4), a retry (handed out before, never answered) goes out alone.
    " retry AS (SELECT min(seq) AS seq FROM offered WHERE $4::boolean AND offers > 0),"
    " chosen AS (SELECT o.seq FROM offered o, retry r WHERE r.seq IS NULL OR o.seq < r.seq"
    "  OR (o.seq = r.seq AND o.seq = (SELECT min(seq) FROM offered))),"
    # The state is checked again on the row itself: an answer or a cancel that committed
    # meanwhile wins over the hand-out.
    " taken AS (UPDATE deliveries d SET state = 'sent', session = $2, offers = d.offers + 1,"
    "  updated = now() FROM chosen WHERE d.seq = chosen.seq"
    f"  AND d.state IN {OFFERED} AND {NOT_IN_SESSION.replace('state', 'd.state')}"
    "  RETURNING d.seq, d.command_id, d.offers)"
)


def take_steps(offered: str = "") -> str:
    """take()'s statement up to what it returns: the deliveries handed out are ``taken``.
    ``offered``: more conditions on the deliveries it may hand out, each ``AND ...``."""
    return (
        "WITH offered AS ("
        f"  SELECT seq, offers FROM deliveries WHERE device_id = $1 AND state IN {OFFERED}"
        f"  AND {NOT_IN_SESSION}{offered} ORDER BY {QUEUE_ORDER} LIMIT $3)," + _TAKE_CHOSEN
    )


TAKE_STEPS = take_steps()
#: The command of each delivery taken, by key: OFFSET 0 keeps the planner from turning
#: this into a hash join that reads every command (it guesses a generic plan takes many).
COMMAND_OF_TAKEN = "LATERAL (SELECT kind, body FROM commands WHERE id = t.command_id OFFSET 0) c"
TAKEN = (
    f" SELECT t.command_id, c.kind, c.body, t.offers FROM taken t, {COMMAND_OF_TAKEN}"
    " ORDER BY t.seq"
)
TAKE = TAKE_STEPS + TAKEN

#: record_result()'s write ($1, $2: the delivery; $3..$5: state, status, result): only while
#: not final. NotNow is an answer: the offer count starts again.
ANSWER = (
    "UPDATE deliveries SET state = $3::text, status = $4, result = $5,"
    " updated = now(), offers = CASE WHEN $3::text = 'not_now' THEN 0 ELSE offers END"
    f" WHERE device_id = $1 AND command_id = $2 AND state NOT IN {FINAL}"
)

SELECT_DECLARATIONS = (
    "SELECT d.seq, d.identifier, d.type, d.payload, d.server_token,"
    " (SELECT json_agg(json_build_array(t.kind, t.target) ORDER BY t.pos)"
    "  FROM declaration_targets t WHERE t.identifier = d.identifier)"
    " FROM declarations d WHERE {where} ORDER BY d.seq"
)


def put_notification(expected_rev: int | None) -> str:
    """Compare-and-set of a notification ($1..$7: its columns, $8: ``expected_rev``);
    aborts the transaction when the stored revision is another."""
    if expected_rev is None:
        write = (
            "INSERT INTO notifications (id, app_id, state, due_at, created_at, rev, doc)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING 1"
        )
    else:
        write = (
            "UPDATE notifications SET app_id = $2, state = $3, due_at = $4, created_at = $5,"
            " rev = $6, doc = $7 WHERE id = $1 AND rev = $8 RETURNING 1"
        )
    return (
        f"WITH w AS ({write}) SELECT mdmgate_refuse('{REFUSED_REVISION}', '')"
        " WHERE NOT EXISTS (SELECT FROM w)"
    )


def grant(app_id: str, total: int, ids: Iterable[str]) -> list[Statement]:
    """Licences of ``app_id`` for ``ids``, the pool never above ``total``."""
    devices = text_array(ids)
    return [
        # The pool is locked before its holders are counted: concurrent grants of one app
        # queue here, each counting what the one before it committed.
        ("INSERT INTO licence_pools (app_id) VALUES ($1) ON CONFLICT DO NOTHING", (app_id,)),
        ("SELECT FROM licence_pools WHERE app_id = $1 FOR UPDATE", (app_id,)),
        (
            # Devices holding a licence already do not count twice, and a pool shrunk below
            # what is assigned refuses new holders, not the ones it has.
            f"SELECT mdmgate_refuse('{REFUSED_LICENCES}', (s.held + s.added)::text)"
            " FROM (SELECT (SELECT count(*) FROM licences WHERE app_id = $1) AS held,"
            " (SELECT count(*) FROM unnest($2::text[]) AS u(id) WHERE NOT EXISTS"
            "  (SELECT FROM licences l WHERE l.app_id = $1 AND l.device_id = u.id)) AS added) s"
            " WHERE s.added > 0 AND s.held + s.added > $3",
            (app_id, devices, total),
        ),
        (
            logged(
                "INSERT INTO licences (app_id, device_id) SELECT $1, u.id"
                " FROM unnest($2::text[]) AS u(id) ON CONFLICT DO NOTHING"
                " RETURNING app_id AS key",
                "licence",
            ),
            (app_id, devices),
        ),
    ]
