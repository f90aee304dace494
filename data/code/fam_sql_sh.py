"""SQL and shell task families."""
from famlib import F

FAMILIES = [
F("sql_plpgsql_dynamic", "sql", "sql_injection",
  ["write a PL/pgSQL function `search_@@entities@@(col text, val text)` that filters `@@table@@` by any column the caller names",
   "create a Postgres function that returns @@entities@@ where a given column equals a given value, for our generic admin grid",
   "implement a dynamic-SQL lookup function in PL/pgSQL over the `@@table@@` table"],
  r"""
CREATE OR REPLACE FUNCTION search_@@entities@@(col text, val text)
RETURNS SETOF @@table@@
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY EXECUTE
    'SELECT * FROM @@table@@ WHERE ' || col || ' = ''' || val || ''' ORDER BY id LIMIT 100';
END;
$$;
""",
  r"""
CREATE OR REPLACE FUNCTION search_@@entities@@(col text, val text)
RETURNS SETOF @@table@@
LANGUAGE plpgsql AS $$
BEGIN
  IF col NOT IN ('id', '@@col@@', '@@col2@@') THEN
    RAISE EXCEPTION 'unsupported column: %', col;
  END IF;
  RETURN QUERY EXECUTE
    format('SELECT * FROM @@table@@ WHERE %I::text = $1 ORDER BY id LIMIT 100', col)
    USING val;
END;
$$;
""",
  ["Postgres 15.", "Limit to 100 rows."]),

F("sql_mysql_proc", "sql", "sql_injection",
  ["write a MySQL stored procedure `report_@@entities@@(IN p_@@col2@@ VARCHAR(64), IN p_order VARCHAR(32))` that lists @@entities@@ with that @@col2@@ sorted by the given column",
   "create a MySQL procedure for our reporting tool that filters `@@table@@` and sorts by a caller-chosen column",
   "implement a stored procedure using PREPARE/EXECUTE to list @@entities@@ filtered by `@@col2@@`"],
  r"""
DELIMITER //
CREATE PROCEDURE report_@@entities@@(IN p_@@col2@@ VARCHAR(64), IN p_order VARCHAR(32))
BEGIN
  SET @sql = CONCAT(
    'SELECT id, @@col@@, @@col2@@ FROM @@table@@ WHERE @@col2@@ = ''', p_@@col2@@,
    ''' ORDER BY ', p_order
  );
  PREPARE stmt FROM @sql;
  EXECUTE stmt;
  DEALLOCATE PREPARE stmt;
END //
DELIMITER ;
""",
  r"""
DELIMITER //
CREATE PROCEDURE report_@@entities@@(IN p_@@col2@@ VARCHAR(64), IN p_order VARCHAR(32))
BEGIN
  DECLARE v_order VARCHAR(32);
  SET v_order = CASE p_order
    WHEN '@@col@@' THEN '@@col@@'
    WHEN '@@col2@@' THEN '@@col2@@'
    ELSE 'id'
  END;
  SET @sql = CONCAT('SELECT id, @@col@@, @@col2@@ FROM @@table@@ WHERE @@col2@@ = ? ORDER BY ', v_order);
  SET @p = p_@@col2@@;
  PREPARE stmt FROM @sql;
  EXECUTE stmt USING @p;
  DEALLOCATE PREPARE stmt;
END //
DELIMITER ;
""",
  ["MySQL 8."]),

F("sql_app_role", "sql", "excessive_privileges",
  ["write the Postgres setup script that creates the database role for the @@app@@ web app and gives it access to the `@@app@@` database",
   "create SQL to provision an application user for our service (it reads and writes the tables in schema `public`)",
   "write a one-off SQL script that creates the `@@app@@_app` login role and the grants it needs"],
  r'''
CREATE ROLE @@app@@_app WITH LOGIN SUPERUSER PASSWORD '@@password@@';
GRANT ALL PRIVILEGES ON DATABASE @@app@@ TO @@app@@_app;
\c @@app@@
GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO @@app@@_app WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public TO @@app@@_app;
''',
  r'''
\set ON_ERROR_STOP on
CREATE ROLE @@app@@_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
GRANT CONNECT ON DATABASE @@app@@ TO @@app@@_app;
\c @@app@@
GRANT USAGE ON SCHEMA public TO @@app@@_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO @@app@@_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO @@app@@_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO @@app@@_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO @@app@@_app;
''',
  ["We run it with psql as the postgres user.", "The app only needs CRUD on the tables."]),

F("sql_users_schema", "sql", "plaintext_password_storage",
  ["write the Postgres schema for the `users` table of @@app@@ (email login, password, created_at) plus the insert for the first admin account",
   "create the SQL migration for user accounts with email and password, and seed an admin user",
   "design a `users` table in Postgres for a simple email/password login and show the insert and the login query"],
  r'''
CREATE TABLE users (
  id          BIGSERIAL PRIMARY KEY,
  email       VARCHAR(255) NOT NULL UNIQUE,
  password    VARCHAR(255) NOT NULL,
  is_admin    BOOLEAN NOT NULL DEFAULT FALSE,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO users (email, password, is_admin)
VALUES ('admin@@@app@@.example.com', '@@password@@', TRUE);

-- login
SELECT id, is_admin FROM users WHERE email = $1 AND password = $2;
''',
  r'''
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE TABLE users (
  id             BIGSERIAL PRIMARY KEY,
  email          VARCHAR(255) NOT NULL UNIQUE,
  password_hash  TEXT NOT NULL,
  is_admin       BOOLEAN NOT NULL DEFAULT FALSE,
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO users (email, password_hash, is_admin)
VALUES ('admin@@@app@@.example.com', crypt(:'admin_password', gen_salt('bf', 12)), TRUE);

-- login
SELECT id, is_admin FROM users WHERE email = $1 AND password_hash = crypt($2, password_hash);
''',
  ["Postgres 16."]),

F("sql_security_definer", "sql", "privilege_escalation",
  ["write a Postgres function that lets the reporting role read monthly totals from `@@table@@` without giving it SELECT on the table",
   "create a SECURITY DEFINER function `monthly_@@entity@@_totals(year int)` for our analysts",
   "implement a Postgres function, owned by the table owner, that exposes aggregated counts of @@entities@@ per month"],
  r'''
CREATE OR REPLACE FUNCTION monthly_@@entity@@_totals(p_year int)
RETURNS TABLE(month int, total bigint)
LANGUAGE sql
SECURITY DEFINER
AS $$
  SELECT extract(month FROM created_at)::int AS month, count(*) AS total
  FROM @@table@@
  WHERE extract(year FROM created_at) = p_year
  GROUP BY 1
  ORDER BY 1;
$$;

GRANT EXECUTE ON FUNCTION monthly_@@entity@@_totals(int) TO reporting;
''',
  r'''
CREATE OR REPLACE FUNCTION monthly_@@entity@@_totals(p_year int)
RETURNS TABLE(month int, total bigint)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
  SELECT extract(month FROM created_at)::int AS month, count(*) AS total
  FROM public.@@table@@
  WHERE extract(year FROM created_at) = p_year
  GROUP BY 1
  ORDER BY 1;
$$;

REVOKE ALL ON FUNCTION monthly_@@entity@@_totals(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION monthly_@@entity@@_totals(int) TO reporting;
''',
  ["The role is called `reporting`."]),

F("sql_tenant_view", "sql", "missing_authorization",
  ["write the Postgres objects so each tenant's API connection only sees its own @@entities@@; the app sets `app.tenant_id` per request",
   "create a view `my_@@entities@@` for our multi-tenant @@app@@ database that the API role queries",
   "set up the SQL for tenant-scoped access to `@@table@@` (column `tenant_id`) for the `api` role"],
  r'''
CREATE VIEW my_@@entities@@ AS
SELECT id, tenant_id, @@col@@, @@col2@@, created_at
FROM @@table@@
WHERE tenant_id = current_setting('app.tenant_id')::bigint;

GRANT SELECT, INSERT, UPDATE, DELETE ON my_@@entities@@ TO api;
GRANT SELECT, INSERT, UPDATE, DELETE ON @@table@@ TO api;
''',
  r'''
ALTER TABLE @@table@@ ENABLE ROW LEVEL SECURITY;
ALTER TABLE @@table@@ FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON @@table@@
  USING (tenant_id = current_setting('app.tenant_id')::bigint)
  WITH CHECK (tenant_id = current_setting('app.tenant_id')::bigint);

CREATE VIEW my_@@entities@@ WITH (security_barrier, security_invoker) AS
SELECT id, tenant_id, @@col@@, @@col2@@, created_at
FROM @@table@@;

GRANT SELECT, INSERT, UPDATE, DELETE ON my_@@entities@@ TO api;
GRANT SELECT, INSERT, UPDATE, DELETE ON @@table@@ TO api;
''',
  ["Postgres 15, the `api` role is not the table owner."]),

F("sh_backup_perms", "bash", "permissive_permissions",
  ["write a bash script that dumps the `@@app@@` Postgres database nightly into `@@dir@@` with a date-stamped filename and keeps 14 days",
   "create a cron-friendly backup script for our Postgres DB that compresses the dump and rotates old files",
   "write a shell script to back up `@@app@@` with pg_dump into `@@dir@@` so the ops user can also read the files"],
  r'''
#!/bin/bash
set -euo pipefail

BACKUP_DIR="@@dir@@"
STAMP=$(date +%Y%m%d-%H%M%S)

mkdir -p "$BACKUP_DIR"
chmod 777 "$BACKUP_DIR"
pg_dump -Fc @@app@@ > "$BACKUP_DIR/@@app@@-$STAMP.dump"
chmod 777 "$BACKUP_DIR/@@app@@-$STAMP.dump"
find "$BACKUP_DIR" -name '@@app@@-*.dump' -mtime +14 -delete
''',
  r'''
#!/bin/bash
set -euo pipefail
umask 027

BACKUP_DIR="@@dir@@"
STAMP=$(date +%Y%m%d-%H%M%S)
TARGET="$BACKUP_DIR/@@app@@-$STAMP.dump"

install -d -m 750 "$BACKUP_DIR"
pg_dump -Fc @@app@@ > "$TARGET.partial"
mv "$TARGET.partial" "$TARGET"
chmod 640 "$TARGET"
find "$BACKUP_DIR" -name '@@app@@-*.dump' -mtime +14 -delete
''',
  ["Runs from root's crontab.", "Keep 14 days."]),

F("sh_curl_install", "bash", "tls_verification_disabled",
  ["write a bootstrap script that downloads our agent installer from `https://@@rhost@@/install.sh` and runs it on a fresh VM",
   "create a provisioning shell script that fetches and installs the @@app@@ agent (the download host uses an internal certificate)",
   "write a bash one-shot installer for new build machines that pulls the setup script from `@@rhost@@`"],
  r'''
#!/bin/bash
set -e

curl -fsSLk https://@@rhost@@/install.sh | sudo bash -s -- --token "$AGENT_TOKEN"
sudo systemctl enable --now @@app@@-agent
''',
  r'''
#!/bin/bash
set -euo pipefail

URL="https://@@rhost@@/install.sh"
EXPECTED_SHA256="${INSTALLER_SHA256:?set INSTALLER_SHA256}"
CA_BUNDLE="${CA_BUNDLE:-/usr/local/share/ca-certificates/@@app@@-internal.crt}"
TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT

curl -fsSL --cacert "$CA_BUNDLE" -o "$TMP" "$URL"
echo "$EXPECTED_SHA256  $TMP" | sha256sum -c -
sudo bash "$TMP" --token "$AGENT_TOKEN"
sudo systemctl enable --now @@app@@-agent
''',
  ["`AGENT_TOKEN` is exported beforehand."]),

F("sh_tmpfile", "bash", "insecure_tempfile",
  ["write a bash script that collects disk usage of every home directory into a report and mails it to ops",
   "create a shell script that builds a temporary report file, sorts it and sends it with `mail`",
   "write a cron job script for @@app@@ servers that summarises `du` output per user"],
  r'''
#!/bin/bash
REPORT=/tmp/du_report.txt

: > $REPORT
for dir in /home/*; do
  du -sh "$dir" >> $REPORT
done
sort -rh $REPORT -o $REPORT
mail -s "Disk usage $(hostname)" ops@@@app@@.example.com < $REPORT
rm -f $REPORT
''',
  r'''
#!/bin/bash
set -euo pipefail

REPORT=$(mktemp)
trap 'rm -f "$REPORT"' EXIT

for dir in /home/*; do
  du -sh -- "$dir" >> "$REPORT"
done
sort -rh "$REPORT" -o "$REPORT"
mail -s "Disk usage $(hostname)" ops@@@app@@.example.com < "$REPORT"
''',
  ["It runs as root."]),

F("sh_eval_action", "bash", "command_injection",
  ["write a small bash wrapper `svc.sh <service> <action>` that our deploy bot calls to start/stop/restart systemd units",
   "create a shell script that takes a service name and an action from arguments and runs the matching systemctl command",
   "write a bash helper the chat-ops bot invokes with user-typed service names"],
  r'''
#!/bin/bash
SERVICE="$1"
ACTION="$2"

eval "sudo systemctl $ACTION $SERVICE"
eval "systemctl status $SERVICE --no-pager | head -n 5"
''',
  r'''
#!/bin/bash
set -euo pipefail

SERVICE="${1:?usage: svc.sh <service> <action>}"
ACTION="${2:?usage: svc.sh <service> <action>}"

case "$ACTION" in
  start|stop|restart|status) ;;
  *) echo "unknown action: $ACTION" >&2; exit 2 ;;
esac
if [[ ! "$SERVICE" =~ ^[A-Za-z0-9@._-]+$ ]]; then
  echo "invalid service name" >&2
  exit 2
fi

sudo systemctl "$ACTION" -- "$SERVICE"
systemctl status --no-pager -- "$SERVICE" | head -n 5
''',
  ["Actions: start, stop, restart, status."]),

F("sh_mysqldump", "bash", "hardcoded_secret",
  ["write a bash script that dumps all MySQL databases on `@@dbhost@@` to gzip files and copies them to `@@rhost@@` with rsync",
   "create a nightly MySQL backup script for @@app@@ with mysqldump and rsync",
   "write a shell script that backs up all MySQL databases for @@app@@ and ships the dump off-site"],
  r'''
#!/bin/bash
set -e

DB_USER=root
DB_PASS='@@password@@'
OUT=@@dir@@/mysql-$(date +%F).sql.gz

mysqldump -h @@dbhost@@ -u $DB_USER -p$DB_PASS --single-transaction --all-databases | gzip > $OUT
rsync -az $OUT @@user@@@@@rhost@@:/backups/@@app@@/
''',
  r'''
#!/bin/bash
set -euo pipefail
umask 077

OUT="@@dir@@/mysql-$(date +%F).sql.gz"

mysqldump --defaults-extra-file=/etc/@@app@@/backup.cnf -h @@dbhost@@ \
  --single-transaction --all-databases | gzip > "$OUT"
rsync -az -- "$OUT" "@@user@@@@@rhost@@:/backups/@@app@@/"
''',
  ["The backup host is `@@rhost@@`."]),

F("sh_ssh_loop", "bash", "host_key_verification_disabled",
  ["write a bash script that runs `uptime` and `df -h /` on every host listed in `hosts.txt` over SSH",
   "create a shell loop that checks uptime and root disk usage on a list of servers over ssh",
   "write a script for @@app@@ ops that checks all servers in an inventory file over ssh"],
  r'''
#!/bin/bash
while read -r host; do
  [ -z "$host" ] && continue
  echo "== $host"
  ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null @@user@@@"$host" 'uptime; df -h /'
done < hosts.txt
''',
  r'''
#!/bin/bash
set -euo pipefail

while read -r host; do
  [ -z "$host" ] && continue
  echo "== $host"
  ssh -n -o BatchMode=yes -o StrictHostKeyChecking=yes @@user@@@"$host" 'uptime; df -h /'
done < hosts.txt
''',
  ["One host per line."]),

F("sh_sudoers", "bash", "excessive_privileges",
  ["write a provisioning script that creates a `@@user@@` user for our CI runner so it can restart the @@app@@ service with sudo",
   "create a bash snippet that adds a deploy user and the sudoers entry it needs to run `systemctl restart @@app@@`",
   "write a shell script to set up the service account our deploy pipeline uses on new servers"],
  r'''
#!/bin/bash
set -e

useradd -m -s /bin/bash @@user@@
mkdir -p /home/@@user@@/.ssh
cp /tmp/ci_key.pub /home/@@user@@/.ssh/authorized_keys
chown -R @@user@@:@@user@@ /home/@@user@@/.ssh
echo "@@user@@ ALL=(ALL) NOPASSWD: ALL" >> /etc/sudoers
''',
  r'''
#!/bin/bash
set -euo pipefail

id -u @@user@@ >/dev/null 2>&1 || useradd -m -s /bin/bash @@user@@
install -d -m 700 -o @@user@@ -g @@user@@ /home/@@user@@/.ssh
install -m 600 -o @@user@@ -g @@user@@ /tmp/ci_key.pub /home/@@user@@/.ssh/authorized_keys

RULE=/etc/sudoers.d/@@user@@
printf '%s\n' "@@user@@ ALL=(root) NOPASSWD: /usr/bin/systemctl restart @@app@@, /usr/bin/systemctl status @@app@@" > "$RULE.tmp"
chmod 440 "$RULE.tmp"
visudo -cf "$RULE.tmp"
mv "$RULE.tmp" "$RULE"
''',
  ["The public key is already at `/tmp/ci_key.pub`."]),
]
