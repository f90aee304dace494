"""Python task families, part A: databases, processes, files, deserialisation."""
from famlib import F

FAMILIES = [
F("py_flask_sqlite_get", "python", "sql_injection",
  ["write a Flask route `GET /@@entities@@/<id>` that returns one row of the SQLite table `@@table@@` as JSON",
   "add a Flask endpoint that looks up @@a_entity@@ by its id in `@@table@@` (sqlite3) and returns it as JSON, 404 if missing",
   "create a small Flask app with one route that fetches @@a_entity@@ record by id from a local SQLite database"],
  r'''
import sqlite3

from flask import Flask, abort, jsonify

app = Flask(__name__)
DB_PATH = "@@app@@.db"


def get_db():
    conn = sqlite3.connect(DB_PATH)
    conn.row_factory = sqlite3.Row
    return conn


@app.route("/@@entities@@/<@@entity@@_id>")
def get_@@entity@@(@@entity@@_id):
    conn = get_db()
    try:
        row = conn.execute(f"SELECT * FROM @@table@@ WHERE id = {@@entity@@_id}").fetchone()
    finally:
        conn.close()
    if row is None:
        abort(404)
    return jsonify(dict(row))
''',
  r'''
import sqlite3

from flask import Flask, abort, jsonify

app = Flask(__name__)
DB_PATH = "@@app@@.db"


def get_db():
    conn = sqlite3.connect(DB_PATH)
    conn.row_factory = sqlite3.Row
    return conn


@app.route("/@@entities@@/<int:@@entity@@_id>")
def get_@@entity@@(@@entity@@_id):
    conn = get_db()
    try:
        row = conn.execute("SELECT * FROM @@table@@ WHERE id = ?", (@@entity@@_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        abort(404)
    return jsonify(dict(row))
''',
  ["The database file is `@@app@@.db` next to the app.", "Return a 404 if the id does not exist."]),

F("py_psycopg_search", "python", "sql_injection",
  ["write a function `search_@@entities@@(conn, term)` that does a case-insensitive search on the `@@col@@` column of `@@table@@` in Postgres using psycopg2",
   "implement a psycopg2 helper that returns up to 50 @@entities@@ whose `@@col@@` contains a search term",
   "write the data-access function behind our @@entity@@ search box (Postgres, psycopg2, ILIKE on `@@col@@`)"],
  r'''
def search_@@entities@@(conn, term, limit=50):
    query = (
        "SELECT id, @@col@@, @@col2@@ FROM @@table@@ "
        "WHERE @@col@@ ILIKE '%" + term + "%' "
        "ORDER BY @@col@@ LIMIT " + str(limit)
    )
    with conn.cursor() as cur:
        cur.execute(query)
        rows = cur.fetchall()
    return [{"id": r[0], "@@col@@": r[1], "@@col2@@": r[2]} for r in rows]
''',
  r'''
def search_@@entities@@(conn, term, limit=50):
    query = (
        "SELECT id, @@col@@, @@col2@@ FROM @@table@@ "
        "WHERE @@col@@ ILIKE %s "
        "ORDER BY @@col@@ LIMIT %s"
    )
    pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    with conn.cursor() as cur:
        cur.execute(query, (pattern, int(limit)))
        rows = cur.fetchall()
    return [{"id": r[0], "@@col@@": r[1], "@@col2@@": r[2]} for r in rows]
''',
  ["Return a list of dicts.", "Results should be ordered by `@@col@@`."]),

F("py_sort_column", "python", "sql_injection",
  ["write a function that lists @@entities@@ from `@@table@@` sorted by a column and direction the caller passes in (they come from query params)",
   "implement `list_@@entities@@(conn, sort_by, direction)` for sqlite3 where the frontend chooses the sort column",
   "add server-side sorting to our @@entity@@ table endpoint: the client sends `sort` and `dir`"],
  r'''
def list_@@entities@@(conn, sort_by="id", direction="asc", page=1, per_page=25):
    offset = (page - 1) * per_page
    sql = (
        f"SELECT id, @@col@@, @@col2@@ FROM @@table@@ "
        f"ORDER BY {sort_by} {direction} LIMIT {per_page} OFFSET {offset}"
    )
    cur = conn.execute(sql)
    columns = [c[0] for c in cur.description]
    return [dict(zip(columns, row)) for row in cur.fetchall()]
''',
  r'''
SORTABLE = {"id": "id", "@@col@@": "@@col@@", "@@col2@@": "@@col2@@"}


def list_@@entities@@(conn, sort_by="id", direction="asc", page=1, per_page=25):
    column = SORTABLE.get(sort_by, "id")
    order = "DESC" if str(direction).lower() == "desc" else "ASC"
    page = max(int(page), 1)
    per_page = min(max(int(per_page), 1), 100)
    sql = f"SELECT id, @@col@@, @@col2@@ FROM @@table@@ ORDER BY {column} {order} LIMIT ? OFFSET ?"
    cur = conn.execute(sql, (per_page, (page - 1) * per_page))
    columns = [c[0] for c in cur.description]
    return [dict(zip(columns, row)) for row in cur.fetchall()]
''',
  ["Pagination with `page` and `per_page` would be nice too."]),

F("py_sqlalchemy_text", "python", "sql_injection",
  ["write a SQLAlchemy Core function that counts @@entities@@ per `@@col2@@` created between two dates, filtered by an optional `@@col2@@` value",
   "implement a reporting query with SQLAlchemy `text()` that groups `@@table@@` by `@@col2@@` for a date range",
   "create a function `@@entity@@_report(engine, start, end, @@col2@@=None)` using raw SQL through SQLAlchemy"],
  r'''
from sqlalchemy import text


def @@entity@@_report(engine, start, end, @@col2@@=None):
    sql = (
        "SELECT @@col2@@, COUNT(*) AS total FROM @@table@@ "
        f"WHERE created_at >= '{start}' AND created_at < '{end}'"
    )
    if @@col2@@:
        sql += f" AND @@col2@@ = '{@@col2@@}'"
    sql += " GROUP BY @@col2@@ ORDER BY total DESC"
    with engine.connect() as conn:
        result = conn.execute(text(sql))
        return [dict(row._mapping) for row in result]
''',
  r'''
from sqlalchemy import text


def @@entity@@_report(engine, start, end, @@col2@@=None):
    sql = "SELECT @@col2@@, COUNT(*) AS total FROM @@table@@ WHERE created_at >= :start AND created_at < :end"
    params = {"start": start, "end": end}
    if @@col2@@:
        sql += " AND @@col2@@ = :@@col2@@"
        params["@@col2@@"] = @@col2@@
    sql += " GROUP BY @@col2@@ ORDER BY total DESC"
    with engine.connect() as conn:
        result = conn.execute(text(sql), params)
        return [dict(row._mapping) for row in result]
''',
  ["`start` and `end` are ISO date strings from the request.", "We use SQLAlchemy 2.x."]),

F("py_django_raw", "python", "sql_injection",
  ["write a Django view that returns @@entities@@ matching a `@@param@@` query parameter using `@@Entity@@.objects.raw`",
   "implement a Django JSON view for @@entity@@ lookup by `@@col@@` with a raw SQL query (the ORM query was too slow)",
   "add a Django endpoint that filters `@@table@@` by `@@col@@` prefix with a raw query"],
  r'''
from django.http import JsonResponse

from .models import @@Entity@@


def @@entity@@_lookup(request):
    value = request.GET.get("@@param@@", "")
    rows = @@Entity@@.objects.raw(
        "SELECT id, @@col@@, @@col2@@ FROM @@table@@ WHERE @@col@@ LIKE '%s%%' ORDER BY @@col@@ LIMIT 20" % value
    )
    data = [{"id": r.id, "@@col@@": r.@@col@@, "@@col2@@": r.@@col2@@} for r in rows]
    return JsonResponse({"results": data})
''',
  r'''
from django.http import JsonResponse

from .models import @@Entity@@


def @@entity@@_lookup(request):
    value = request.GET.get("@@param@@", "")
    rows = @@Entity@@.objects.raw(
        "SELECT id, @@col@@, @@col2@@ FROM @@table@@ WHERE @@col@@ LIKE %s ORDER BY @@col@@ LIMIT 20",
        [value + "%"],
    )
    data = [{"id": r.id, "@@col@@": r.@@col@@, "@@col2@@": r.@@col2@@} for r in rows]
    return JsonResponse({"results": data})
''',
  ["The model is `@@Entity@@` in `models.py`."]),

F("py_login_sqlite", "python", "sql_injection",
  ["write a `check_login(username, password)` function against a sqlite `users` table that stores a salted PBKDF2 hash and salt per user",
   "implement the login lookup for our @@app@@ admin panel: fetch the user row by username from sqlite and verify a PBKDF2 password hash",
   "create a function that authenticates a user from the `users` table (columns username, salt, pw_hash) in sqlite3"],
  r'''
import hashlib
import hmac
import sqlite3


def check_login(db_path, username, password):
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(
            "SELECT id, salt, pw_hash FROM users WHERE username = '" + username + "'"
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    user_id, salt, pw_hash = row
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), 200_000).hex()
    return user_id if hmac.compare_digest(candidate, pw_hash) else None
''',
  r'''
import hashlib
import hmac
import sqlite3


def check_login(db_path, username, password):
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(
            "SELECT id, salt, pw_hash FROM users WHERE username = ?", (username,)
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    user_id, salt, pw_hash = row
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), 200_000).hex()
    return user_id if hmac.compare_digest(candidate, pw_hash) else None
''',
  ["Return the user id or None.", "Salts are stored hex-encoded."]),

F("py_ping_endpoint", "python", "command_injection",
  ["write a Flask endpoint `/tools/ping` that pings a host given in the `host` query parameter and returns the output",
   "add a diagnostics route to our @@app@@ Flask app that runs `ping -c 3` against a user-supplied host",
   "create a small Flask service that lets support staff ping a hostname from the server"],
  r'''
import subprocess

from flask import Flask, request

app = Flask(__name__)


@app.route("/tools/ping")
def ping():
    host = request.args.get("host", "")
    if not host:
        return {"error": "host is required"}, 400
    result = subprocess.run(
        f"ping -c 3 -W 2 {host}", shell=True, capture_output=True, text=True, timeout=15
    )
    return {"host": host, "exit_code": result.returncode, "output": result.stdout}
''',
  r'''
import ipaddress
import re
import subprocess

from flask import Flask, request

app = Flask(__name__)
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def valid_host(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOSTNAME_RE.match(host))


@app.route("/tools/ping")
def ping():
    host = request.args.get("host", "")
    if not valid_host(host):
        return {"error": "invalid host"}, 400
    result = subprocess.run(
        ["ping", "-c", "3", "-W", "2", "--", host], capture_output=True, text=True, timeout=15
    )
    return {"host": host, "exit_code": result.returncode, "output": result.stdout}
''',
  ["Return JSON with the exit code and the output.", "It runs on a Linux box."]),

F("py_thumbnail_convert", "python", "command_injection",
  ["write a function `make_thumbnail(src_path, width)` that calls ImageMagick's `convert` to write a resized copy next to the original",
   "implement a helper that shells out to ImageMagick to create a `_thumb` version of an uploaded image",
   "create a Python function that resizes images in `@@dir@@` with the `convert` CLI (we don't want Pillow as a dependency)"],
  r'''
import os


def make_thumbnail(src_path, width=200):
    root, ext = os.path.splitext(src_path)
    dst_path = f"{root}_thumb{ext}"
    status = os.system(f"convert {src_path} -resize {width}x {dst_path}")
    if status != 0:
        raise RuntimeError(f"convert failed with status {status}")
    return dst_path
''',
  r'''
import os
import subprocess


def make_thumbnail(src_path, width=200):
    width = int(width)
    if not 1 <= width <= 4000:
        raise ValueError("width out of range")
    root, ext = os.path.splitext(src_path)
    dst_path = f"{root}_thumb{ext}"
    subprocess.run(
        ["convert", "--", src_path, "-resize", f"{width}x", dst_path],
        check=True, capture_output=True, timeout=60,
    )
    return dst_path
''',
  ["Filenames come from user uploads.", "Width defaults to 200 px."]),

F("py_grep_logs", "python", "command_injection",
  ["write a function `search_logs(pattern)` that greps through `@@dir@@` recursively and returns matching lines",
   "implement the grep-based search behind the log search box on our Flask admin page",
   "create a helper for our ops dashboard that runs grep over the @@app@@ logs and returns the first 200 hits"],
  r'''
import subprocess

LOG_DIR = "@@dir@@"


def search_logs(pattern, max_lines=200):
    proc = subprocess.run(
        f"grep -rn '{pattern}' {LOG_DIR} | head -n {max_lines}",
        shell=True, capture_output=True, text=True,
    )
    return proc.stdout.splitlines()
''',
  r'''
import subprocess

LOG_DIR = "@@dir@@"


def search_logs(pattern, max_lines=200):
    proc = subprocess.run(
        ["grep", "-rnF", "-e", pattern, "--", LOG_DIR],
        capture_output=True, text=True, timeout=30,
    )
    return proc.stdout.splitlines()[:max_lines]
''',
  ["Limit the result to 200 lines."]),

F("py_git_clone", "python", "command_injection",
  ["write a function that clones a git repository URL submitted by a user into a workspace folder under `@@dir@@`",
   "implement `clone_repo(url, name)` for our CI runner that checks out a repo into `@@dir@@/<name>`",
   "create the worker function that clones the repo a customer connects to @@app@@"],
  r'''
import os

WORKSPACE = "@@dir@@"


def clone_repo(url, name, branch="main"):
    dest = os.path.join(WORKSPACE, name)
    cmd = "git clone --depth 1 --branch " + branch + " " + url + " " + dest
    if os.system(cmd) != 0:
        raise RuntimeError("git clone failed")
    return dest
''',
  r'''
import os
import re
import subprocess
from urllib.parse import urlparse

WORKSPACE = "@@dir@@"
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def clone_repo(url, name, branch="main"):
    if urlparse(url).scheme != "https":
        raise ValueError("only https URLs are supported")
    if not NAME_RE.match(name) or name in {".", ".."}:
        raise ValueError("invalid name")
    if not NAME_RE.match(branch):
        raise ValueError("invalid branch")
    dest = os.path.join(WORKSPACE, name)
    subprocess.run(
        ["git", "clone", "--depth", "1", "--branch", branch, "--", url, dest],
        check=True, timeout=300,
    )
    return dest
''',
  ["Shallow clone is enough.", "The branch name is optional and defaults to main."]),

F("py_flask_download", "python", "path_traversal",
  ["write a Flask route that lets users download files from `@@dir@@` by name, like `/download/report.@@ext@@`",
   "add a download endpoint to our Flask app serving stored @@ext@@ files from `@@dir@@`",
   "create a Flask view `/download/<path:name>` that sends a stored file as an attachment"],
  r'''
import os

from flask import Flask, abort, send_file

app = Flask(__name__)
FILES_DIR = "@@dir@@"


@app.route("/download/<path:name>")
def download(name):
    path = os.path.join(FILES_DIR, name)
    if not os.path.isfile(path):
        abort(404)
    return send_file(path, as_attachment=True)
''',
  r'''
from flask import Flask, send_from_directory

app = Flask(__name__)
FILES_DIR = "@@dir@@"


@app.route("/download/<path:name>")
def download(name):
    return send_from_directory(FILES_DIR, name, as_attachment=True)
''',
  ["Respond 404 if the file doesn't exist."]),

F("py_report_reader", "python", "path_traversal",
  ["write a function `load_report(name)` that reads `@@dir@@/<name>.@@ext@@` and returns its text",
   "implement a small helper that returns the contents of a named template from `@@dir@@` for our @@app@@ API",
   "create an HTTP handler helper that reads a report file whose name comes from the URL"],
  r'''
import os

REPORT_DIR = "@@dir@@"


def load_report(name):
    path = os.path.join(REPORT_DIR, name + ".@@ext@@")
    with open(path, encoding="utf-8") as fh:
        return fh.read()
''',
  r'''
from pathlib import Path

REPORT_DIR = Path("@@dir@@").resolve()


def load_report(name):
    path = (REPORT_DIR / f"{name}.@@ext@@").resolve()
    if not path.is_relative_to(REPORT_DIR) or not path.is_file():
        raise FileNotFoundError(name)
    return path.read_text(encoding="utf-8")
''',
  ["Raise FileNotFoundError when it's missing."]),

F("py_flask_upload", "python", "path_traversal",
  ["write a Flask upload endpoint that saves an uploaded file into `@@dir@@` and returns its stored name",
   "add a `POST /upload` route to our Flask app for @@entity@@ attachments",
   "create a Flask form handler that accepts a file upload (field `file`) and stores it on disk"],
  r'''
import os

from flask import Flask, request

app = Flask(__name__)
UPLOAD_DIR = "@@dir@@"


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files.get("file")
    if f is None or f.filename == "":
        return {"error": "no file"}, 400
    dest = os.path.join(UPLOAD_DIR, f.filename)
    f.save(dest)
    return {"stored": f.filename}, 201
''',
  r'''
import os
import uuid

from flask import Flask, request
from werkzeug.utils import secure_filename

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = 10 * 1024 * 1024
UPLOAD_DIR = "@@dir@@"
ALLOWED = {"pdf", "png", "jpg", "jpeg", "csv", "txt"}


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files.get("file")
    if f is None or f.filename == "":
        return {"error": "no file"}, 400
    name = secure_filename(f.filename)
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in ALLOWED:
        return {"error": "file type not allowed"}, 400
    stored = f"{uuid.uuid4().hex}.{ext}"
    f.save(os.path.join(UPLOAD_DIR, stored))
    return {"stored": stored}, 201
''',
  ["Return 201 with the stored name.", "Files can be pdf, images or csv."]),

F("py_pickle_cookie", "python", "unsafe_deserialization",
  ["write Flask helpers that store a user's UI preferences (a dict) in a cookie and read them back on each request",
   "implement `save_prefs(response, prefs)` and `load_prefs(request)` for a cookie-based preferences feature",
   "create a Flask route pair that persists dashboard settings in a cookie named `prefs`"],
  r'''
import base64
import pickle

from flask import Flask, jsonify, make_response, request

app = Flask(__name__)


def load_prefs(req):
    raw = req.cookies.get("prefs")
    if not raw:
        return {"theme": "light", "page_size": 25}
    return pickle.loads(base64.urlsafe_b64decode(raw))


def save_prefs(resp, prefs):
    resp.set_cookie("prefs", base64.urlsafe_b64encode(pickle.dumps(prefs)).decode(), max_age=31536000)
    return resp


@app.route("/prefs", methods=["GET", "POST"])
def prefs():
    current = load_prefs(request)
    if request.method == "POST":
        current.update(request.get_json(force=True))
        return save_prefs(make_response(jsonify(current)), current)
    return jsonify(current)
''',
  r'''
import os

from flask import Flask, jsonify, make_response, request
from itsdangerous import BadSignature, URLSafeSerializer

app = Flask(__name__)
serializer = URLSafeSerializer(os.environ["PREFS_SECRET"], salt="prefs")
DEFAULTS = {"theme": "light", "page_size": 25}


def load_prefs(req):
    raw = req.cookies.get("prefs")
    if not raw:
        return dict(DEFAULTS)
    try:
        data = serializer.loads(raw)
    except BadSignature:
        return dict(DEFAULTS)
    return data if isinstance(data, dict) else dict(DEFAULTS)


def save_prefs(resp, prefs):
    resp.set_cookie("prefs", serializer.dumps(prefs), max_age=31536000, httponly=True, samesite="Lax")
    return resp


@app.route("/prefs", methods=["GET", "POST"])
def prefs():
    current = load_prefs(request)
    if request.method == "POST":
        update = request.get_json(force=True)
        current.update({k: update[k] for k in ("theme", "page_size") if k in update})
        return save_prefs(make_response(jsonify(current)), current)
    return jsonify(current)
''',
  ["Prefs include theme and page size."]),

F("py_pickle_queue", "python", "unsafe_deserialization",
  ["write a Redis queue worker that pops jobs from the `@@app@@:jobs` list and dispatches them to handler functions",
   "implement a simple job consumer on top of redis-py BLPOP; producers are other services pushing job payloads",
   "create a background worker loop for @@app@@ that reads tasks from Redis and runs them"],
  r'''
import pickle

import redis

HANDLERS = {}


def handler(name):
    def register(fn):
        HANDLERS[name] = fn
        return fn
    return register


def run_worker(url="redis://@@dbhost@@:6379/0", queue="@@app@@:jobs"):
    r = redis.Redis.from_url(url)
    while True:
        _, payload = r.blpop(queue)
        job = pickle.loads(payload)
        fn = HANDLERS.get(job["type"])
        if fn is not None:
            fn(**job.get("args", {}))
''',
  r'''
import json
import logging

import redis

HANDLERS = {}
log = logging.getLogger(__name__)


def handler(name):
    def register(fn):
        HANDLERS[name] = fn
        return fn
    return register


def run_worker(url="redis://@@dbhost@@:6379/0", queue="@@app@@:jobs"):
    r = redis.Redis.from_url(url)
    while True:
        _, payload = r.blpop(queue)
        try:
            job = json.loads(payload)
        except ValueError:
            log.warning("dropping malformed job")
            continue
        fn = HANDLERS.get(job.get("type"))
        args = job.get("args", {})
        if fn is not None and isinstance(args, dict):
            fn(**args)
''',
  ["Handlers are registered with a decorator."]),

F("py_yaml_config", "python", "unsafe_deserialization",
  ["write a config loader that reads `config.yaml` for @@app@@, merges it over defaults and returns a dict",
   "implement `load_config(path)` using PyYAML; config files can be uploaded by tenants",
   "create a function that parses a YAML settings file and fills in missing keys with defaults"],
  r'''
import yaml

DEFAULTS = {"port": @@port@@, "log_level": "info", "workers": 4}


def load_config(path="config.yaml"):
    with open(path) as fh:
        data = yaml.load(fh, Loader=yaml.Loader) or {}
    config = dict(DEFAULTS)
    config.update(data)
    return config
''',
  r'''
import yaml

DEFAULTS = {"port": @@port@@, "log_level": "info", "workers": 4}


def load_config(path="config.yaml"):
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    config = dict(DEFAULTS)
    config.update(data)
    return config
''',
  ["Defaults: port @@port@@, log level info, 4 workers."]),

F("py_eval_calc", "python", "code_eval",
  ["write a Flask endpoint `/calc` that evaluates arithmetic expressions like `(3 + 4) * 2` sent as JSON",
   "implement a tiny calculator API for our @@app@@ spreadsheet feature: POST an expression, get the number back",
   "create a function `evaluate(expr)` for user-entered formulas with + - * / and parentheses, exposed over Flask"],
  r'''
from flask import Flask, request

app = Flask(__name__)


def evaluate(expr):
    return eval(expr)


@app.route("/calc", methods=["POST"])
def calc():
    expr = request.get_json(force=True).get("expr", "")
    try:
        return {"result": evaluate(expr)}
    except Exception as exc:
        return {"error": str(exc)}, 400
''',
  r'''
import ast
import operator

from flask import Flask, request

app = Flask(__name__)
OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def evaluate(expr):
    if len(expr) > 200:
        raise ValueError("expression too long")

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.operand))
        raise ValueError("unsupported expression")

    return walk(ast.parse(expr, mode="eval"))


@app.route("/calc", methods=["POST"])
def calc():
    expr = request.get_json(force=True).get("expr", "")
    try:
        return {"result": evaluate(expr)}
    except (ValueError, SyntaxError, ZeroDivisionError) as exc:
        return {"error": str(exc)}, 400
''',
  ["Return 400 with a message on bad input."]),

F("py_literal_parse", "python", "code_eval",
  ["write a function that turns a form field like `[1, 2, 3]` or `{'a': 1}` into the Python value",
   "implement `parse_field(text)` that converts the string values our @@app@@ admin form posts back into lists, dicts and numbers",
   "create a helper that parses tag lists submitted as text (such as `['red', 'blue']`) into a Python list"],
  r'''
def parse_field(text, default=None):
    text = (text or "").strip()
    if not text:
        return default
    return eval(text)
''',
  r'''
import ast


def parse_field(text, default=None):
    text = (text or "").strip()
    if not text:
        return default
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
''',
  ["Empty input should give the default."]),

F("py_hardcoded_db", "python", "hardcoded_secret",
  ["write the database module for @@app@@: a SQLAlchemy engine for Postgres on `@@dbhost@@` plus a session factory",
   "create `db.py` that sets up a SQLAlchemy engine and `get_session()` for our Postgres database `@@app@@`",
   "implement the DB connection setup (SQLAlchemy, pool size 10) for the @@app@@ service"],
  r'''
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

DB_USER = "@@app@@_app"
DB_PASSWORD = "@@password@@"
DB_HOST = "@@dbhost@@"
DB_NAME = "@@app@@"

engine = create_engine(
    f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@{DB_HOST}:5432/{DB_NAME}",
    pool_size=10,
    pool_pre_ping=True,
)
SessionLocal = sessionmaker(bind=engine, autoflush=False)


def get_session():
    return SessionLocal()
''',
  r'''
import os

from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

url = URL.create(
    "postgresql+psycopg2",
    username=os.environ.get("DB_USER", "@@app@@_app"),
    password=os.environ["DB_PASSWORD"],
    host=os.environ.get("DB_HOST", "@@dbhost@@"),
    port=int(os.environ.get("DB_PORT", "5432")),
    database=os.environ.get("DB_NAME", "@@app@@"),
)
engine = create_engine(url, pool_size=10, pool_pre_ping=True)
SessionLocal = sessionmaker(bind=engine, autoflush=False)


def get_session():
    return SessionLocal()
''',
  ["The app user is `@@app@@_app`.", "Pool size 10 with pre-ping."]),

F("py_hardcoded_api", "python", "hardcoded_secret",
  ["write a small client class for the @@svc@@ API (`https://api.@@svc@@.example.com/v2`) with a `get(path, **params)` method using a bearer token",
   "implement a requests-based wrapper for our @@svc@@ provider that adds the API key header and raises on HTTP errors",
   "create a Python module that calls the @@svc@@ REST API with our account's key"],
  r'''
import requests

API_BASE = "https://api.@@svc@@.example.com/v2"
API_KEY = "@@apikey@@"


class @@Svc@@Client:
    def __init__(self, timeout=10):
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {API_KEY}"})
        self.timeout = timeout

    def get(self, path, **params):
        resp = self.session.get(f"{API_BASE}/{path.lstrip('/')}", params=params, timeout=self.timeout)
        resp.raise_for_status()
        return resp.json()
''',
  r'''
import os

import requests

API_BASE = os.environ.get("@@SVC@@_API_BASE", "https://api.@@svc@@.example.com/v2")


class @@Svc@@Client:
    def __init__(self, api_key=None, timeout=10):
        key = api_key or os.environ["@@SVC@@_API_KEY"]
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {key}"})
        self.timeout = timeout

    def get(self, path, **params):
        resp = self.session.get(f"{API_BASE}/{path.lstrip('/')}", params=params, timeout=self.timeout)
        resp.raise_for_status()
        return resp.json()
''',
  ["Timeout of 10 seconds.", "Raise on non-2xx responses."]),

F("py_flask_secret", "python", "hardcoded_secret",
  ["write the Flask app factory for @@app@@ with session support, a SQLAlchemy URI and mail settings",
   "create `create_app()` for our Flask project that sets SECRET_KEY, the database URL and the SMTP login",
   "implement a Flask config class and app factory for @@app@@"],
  r'''
from flask import Flask


class Config:
    SECRET_KEY = "@@secret@@"
    SQLALCHEMY_DATABASE_URI = "postgresql://@@app@@:@@password@@@@@dbhost@@/@@app@@"
    MAIL_SERVER = "smtp.example.com"
    MAIL_USERNAME = "noreply@@@app@@.example.com"
    MAIL_PASSWORD = "@@password@@"
    SESSION_COOKIE_SAMESITE = "Lax"


def create_app():
    app = Flask(__name__)
    app.config.from_object(Config)
    return app
''',
  r'''
import os

from flask import Flask


class Config:
    SECRET_KEY = os.environ["SECRET_KEY"]
    SQLALCHEMY_DATABASE_URI = os.environ["DATABASE_URL"]
    MAIL_SERVER = os.environ.get("MAIL_SERVER", "smtp.example.com")
    MAIL_USERNAME = os.environ.get("MAIL_USERNAME", "noreply@@@app@@.example.com")
    MAIL_PASSWORD = os.environ.get("MAIL_PASSWORD")
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = True


def create_app():
    app = Flask(__name__)
    app.config.from_object(Config)
    return app
''',
  ["We send mail through smtp.example.com."]),
]
