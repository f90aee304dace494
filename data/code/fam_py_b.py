"""Python task families, part B: crypto, web handlers, auth, files, transport."""
from famlib import F

FAMILIES = [
F("py_md5_password", "python", "weak_password_hash",
  ["write `hash_password` and `verify_password` functions for the user accounts of @@app@@",
   "implement password storage helpers for our sign-up flow (stdlib only)",
   "create the two functions our auth module needs: one to hash a new password and one to check a login attempt"],
  r'''
import hashlib


def hash_password(password):
    return hashlib.md5(password.encode("utf-8")).hexdigest()


def verify_password(password, stored_hash):
    return hash_password(password) == stored_hash
''',
  r'''
import base64
import hashlib
import hmac
import os

N, R, P = 2**14, 8, 1


def hash_password(password):
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=N, r=R, p=P, dklen=32)
    return "scrypt${}${}".format(base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def verify_password(password, stored_hash):
    try:
        scheme, salt_b64, digest_b64 = stored_hash.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    salt = base64.b64decode(salt_b64)
    expected = base64.b64decode(digest_b64)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=N, r=R, p=P, dklen=len(expected))
    return hmac.compare_digest(digest, expected)
''',
  ["Stdlib only please.", "The hash goes into a VARCHAR(255) column."]),

F("py_sha1_userfile", "python", "weak_password_hash",
  ["write a tiny user store for a CLI tool that keeps usernames and password hashes in `users.json` with `add_user` and `authenticate`",
   "implement a JSON-file-backed account store for our internal @@app@@ script with add and login functions",
   "create a minimal credentials file manager in Python (add a user, check a password)"],
  r'''
import hashlib
import json
import os

USERS_FILE = "users.json"


def _load():
    if not os.path.exists(USERS_FILE):
        return {}
    with open(USERS_FILE) as fh:
        return json.load(fh)


def add_user(username, password):
    users = _load()
    users[username] = hashlib.sha1(password.encode()).hexdigest()
    with open(USERS_FILE, "w") as fh:
        json.dump(users, fh, indent=2)


def authenticate(username, password):
    users = _load()
    return users.get(username) == hashlib.sha1(password.encode()).hexdigest()
''',
  r'''
import hashlib
import hmac
import json
import os

USERS_FILE = "users.json"
ITERATIONS = 600_000


def _load():
    if not os.path.exists(USERS_FILE):
        return {}
    with open(USERS_FILE) as fh:
        return json.load(fh)


def _hash(password, salt):
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS).hex()


def add_user(username, password):
    users = _load()
    salt = os.urandom(16)
    users[username] = {"salt": salt.hex(), "hash": _hash(password, salt)}
    fd = os.open(USERS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(users, fh, indent=2)


def authenticate(username, password):
    entry = _load().get(username)
    if not entry:
        return False
    candidate = _hash(password, bytes.fromhex(entry["salt"]))
    return hmac.compare_digest(candidate, entry["hash"])
''',
  ["No third-party packages."]),

F("py_reset_token", "python", "weak_randomness",
  ["write a function that creates a password-reset token for a user, stores it with a 1-hour expiry in the `password_resets` table and returns it",
   "implement `create_reset_token(conn, user_id)` for the forgot-password flow of @@app@@",
   "create the token generator for our email verification links (32 characters, URL-safe)"],
  r'''
import random
import string
from datetime import datetime, timedelta, timezone

ALPHABET = string.ascii_letters + string.digits


def create_reset_token(conn, user_id, ttl_minutes=60):
    token = "".join(random.choice(ALPHABET) for _ in range(32))
    expires = datetime.now(timezone.utc) + timedelta(minutes=ttl_minutes)
    conn.execute(
        "INSERT INTO password_resets (user_id, token, expires_at) VALUES (?, ?, ?)",
        (user_id, token, expires.isoformat()),
    )
    conn.commit()
    return token
''',
  r'''
import hashlib
import secrets
from datetime import datetime, timedelta, timezone


def create_reset_token(conn, user_id, ttl_minutes=60):
    token = secrets.token_urlsafe(32)
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    expires = datetime.now(timezone.utc) + timedelta(minutes=ttl_minutes)
    conn.execute(
        "INSERT INTO password_resets (user_id, token_hash, expires_at) VALUES (?, ?, ?)",
        (user_id, token_hash, expires.isoformat()),
    )
    conn.commit()
    return token
''',
  ["We use sqlite3.", "Tokens expire after an hour."]),

F("py_otp_code", "python", "weak_randomness",
  ["write a function that generates a 6-digit login code for SMS two-factor and stores it in Redis for 5 minutes",
   "implement `send_login_code(redis_client, phone)` that creates a one-time numeric code and caches it",
   "create the OTP helper for @@app@@: make a 6-digit code, save it with a TTL, verify it later"],
  r'''
import random


def send_login_code(r, phone, sms_send):
    code = str(random.randint(100000, 999999))
    r.setex(f"otp:{phone}", 300, code)
    sms_send(phone, f"Your @@app@@ code is {code}")
    return True


def verify_login_code(r, phone, code):
    stored = r.get(f"otp:{phone}")
    if stored is None:
        return False
    if stored.decode() == code:
        r.delete(f"otp:{phone}")
        return True
    return False
''',
  r'''
import hmac
import secrets


def send_login_code(r, phone, sms_send):
    code = f"{secrets.randbelow(1_000_000):06d}"
    r.setex(f"otp:{phone}", 300, code)
    r.delete(f"otp_attempts:{phone}")
    sms_send(phone, f"Your @@app@@ code is {code}")
    return True


def verify_login_code(r, phone, code):
    attempts = r.incr(f"otp_attempts:{phone}")
    r.expire(f"otp_attempts:{phone}", 300)
    if attempts > 5:
        return False
    stored = r.get(f"otp:{phone}")
    if stored is None:
        return False
    if hmac.compare_digest(stored.decode(), str(code)):
        r.delete(f"otp:{phone}", f"otp_attempts:{phone}")
        return True
    return False
''',
  ["`sms_send(phone, text)` already exists."]),

F("py_aes_ecb", "python", "weak_cipher",
  ["write `encrypt_field` / `decrypt_field` helpers with the `cryptography` package to encrypt @@col@@ values before storing them",
   "implement AES encryption for a sensitive column in `@@table@@`; the key is 32 bytes from our KMS",
   "create a small Python module to encrypt and decrypt short strings with AES-256"],
  r'''
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def encrypt_field(key, plaintext):
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return (enc.update(data) + enc.finalize()).hex()


def decrypt_field(key, token):
    dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    data = dec.update(bytes.fromhex(token)) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(data) + unpadder.finalize()).decode("utf-8")
''',
  r'''
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def encrypt_field(key, plaintext, context=b"@@table@@.@@col@@"):
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), context)
    return (nonce + ct).hex()


def decrypt_field(key, token, context=b"@@table@@.@@col@@"):
    raw = bytes.fromhex(token)
    nonce, ct = raw[:12], raw[12:]
    return AESGCM(key).decrypt(nonce, ct, context).decode("utf-8")
''',
  ["Store the result as hex text."]),

F("py_static_iv", "python", "weak_cipher",
  ["write a function to encrypt backup archives with AES-CBC before uploading them, key from the `BACKUP_KEY` env var (hex)",
   "implement `encrypt_file(src, dst)` and `decrypt_file(src, dst)` with the cryptography library",
   "create a helper that encrypts exported CSV files for @@app@@ before they leave the server"],
  r'''
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY = bytes.fromhex(os.environ["BACKUP_KEY"])
IV = b"@@app@@-iv-0000"[:16].ljust(16, b"0")


def encrypt_file(src, dst):
    with open(src, "rb") as fh:
        data = fh.read()
    padder = padding.PKCS7(128).padder()
    data = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
    with open(dst, "wb") as fh:
        fh.write(enc.update(data) + enc.finalize())


def decrypt_file(src, dst):
    with open(src, "rb") as fh:
        data = fh.read()
    dec = Cipher(algorithms.AES(KEY), modes.CBC(IV)).decryptor()
    data = dec.update(data) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    with open(dst, "wb") as fh:
        fh.write(unpadder.update(data) + unpadder.finalize())
''',
  r'''
import base64
import os

from cryptography.fernet import Fernet


def _fernet():
    key = bytes.fromhex(os.environ["BACKUP_KEY"])
    return Fernet(base64.urlsafe_b64encode(key[:32]))


def encrypt_file(src, dst):
    with open(src, "rb") as fh:
        data = fh.read()
    with open(dst, "wb") as fh:
        fh.write(_fernet().encrypt(data))


def decrypt_file(src, dst):
    with open(src, "rb") as fh:
        token = fh.read()
    with open(dst, "wb") as fh:
        fh.write(_fernet().decrypt(token))
''',
  ["The key is 32 bytes, hex in the environment."]),

F("py_chmod_export", "python", "permissive_permissions",
  ["write a function that exports `@@table@@` to a CSV file in `@@dir@@` so a second service can pick it up",
   "implement `export_@@entities@@(conn, path)` that writes rows to CSV and makes sure the file is readable by the sync job",
   "create the nightly CSV export for @@app@@ @@entities@@"],
  r'''
import csv
import os


def export_@@entities@@(conn, path="@@dir@@/@@entities@@.csv"):
    cur = conn.execute("SELECT id, @@col@@, @@col2@@ FROM @@table@@ ORDER BY id")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "@@col@@", "@@col2@@"])
        writer.writerows(cur)
    os.chmod(path, 0o777)
    return path
''',
  r'''
import csv
import os


def export_@@entities@@(conn, path="@@dir@@/@@entities@@.csv"):
    cur = conn.execute("SELECT id, @@col@@, @@col2@@ FROM @@table@@ ORDER BY id")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "@@col@@", "@@col2@@"])
        writer.writerows(cur)
    os.chmod(path, 0o640)
    return path
''',
  ["The sync job runs as a different user in the same group."]),

F("py_makedirs_cache", "python", "permissive_permissions",
  ["write a helper that creates the per-user cache directory `@@dir@@/<user>` and writes a JSON blob into it",
   "implement `cache_put(user, key, value)` and `cache_get(user, key)` backed by files under `@@dir@@`",
   "create a tiny on-disk JSON cache for @@app@@ keyed by user and key"],
  r'''
import json
import os

CACHE_ROOT = "@@dir@@"


def _user_dir(user):
    path = os.path.join(CACHE_ROOT, user)
    os.makedirs(path, mode=0o777, exist_ok=True)
    os.chmod(path, 0o777)
    return path


def cache_put(user, key, value):
    path = os.path.join(_user_dir(user), f"{key}.json")
    with open(path, "w") as fh:
        json.dump(value, fh)
    os.chmod(path, 0o666)


def cache_get(user, key, default=None):
    path = os.path.join(_user_dir(user), f"{key}.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
''',
  r'''
import json
import os
import re
import tempfile

CACHE_ROOT = "@@dir@@"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _user_dir(user):
    if not NAME_RE.match(user):
        raise ValueError("invalid user")
    path = os.path.join(CACHE_ROOT, user)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def cache_put(user, key, value):
    if not NAME_RE.match(key):
        raise ValueError("invalid key")
    directory = _user_dir(user)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(value, fh)
    os.replace(tmp, os.path.join(directory, f"{key}.json"))


def cache_get(user, key, default=None):
    if not NAME_RE.match(key):
        raise ValueError("invalid key")
    path = os.path.join(_user_dir(user), f"{key}.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
''',
  ["Several worker processes share it."]),

F("py_ssrf_preview", "python", "ssrf",
  ["write a Flask endpoint that fetches a URL the user pasted and returns the page title for a link preview",
   "implement `/api/preview?@@urlp@@=...` in Flask that downloads the page and extracts `<title>`",
   "create a link-unfurling route for our @@app@@ chat that fetches the given URL server-side"],
  r'''
import re

import requests
from flask import Flask, request

app = Flask(__name__)
TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


@app.route("/api/preview")
def preview():
    url = request.args.get("@@urlp@@", "")
    resp = requests.get(url, timeout=5)
    match = TITLE_RE.search(resp.text)
    return {"url": url, "status": resp.status_code, "title": match.group(1).strip() if match else None}
''',
  r'''
import ipaddress
import re
import socket
from urllib.parse import urlparse

import requests
from flask import Flask, request

app = Flask(__name__)
TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def public_http_url(url):
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_global for info in infos)


@app.route("/api/preview")
def preview():
    url = request.args.get("@@urlp@@", "")
    if not public_http_url(url):
        return {"error": "URL not allowed"}, 400
    resp = requests.get(url, timeout=5, allow_redirects=False, stream=True)
    body = resp.raw.read(512 * 1024, decode_content=True).decode(resp.encoding or "utf-8", "replace")
    match = TITLE_RE.search(body)
    return {"url": url, "status": resp.status_code, "title": match.group(1).strip() if match else None}
''',
  ["A regex for the title is fine."]),

F("py_requests_verify", "python", "tls_verification_disabled",
  ["write a function that pulls the latest @@entities@@ from our partner's HTTPS endpoint `https://@@rhost@@/export` and returns the JSON",
   "implement a sync job that downloads a JSON feed over HTTPS from `@@rhost@@` every hour",
   "create a requests-based fetcher for the @@svc@@ export API; their server uses a certificate from their internal CA"],
  r'''
import requests


def fetch_@@entities@@(token):
    resp = requests.get(
        "https://@@rhost@@/export",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
        verify=False,
    )
    resp.raise_for_status()
    return resp.json()
''',
  r'''
import os

import requests

CA_BUNDLE = os.environ.get("PARTNER_CA_BUNDLE", True)


def fetch_@@entities@@(token):
    resp = requests.get(
        "https://@@rhost@@/export",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
        verify=CA_BUNDLE,
    )
    resp.raise_for_status()
    return resp.json()
''',
  ["The token is passed in by the caller."]),

F("py_smtp_tls", "python", "tls_verification_disabled",
  ["write a function that sends a plain-text email through our SMTP relay on port 587 with STARTTLS and login",
   "implement `send_mail(to, subject, body)` using smtplib for @@app@@ notifications",
   "create an email helper with smtplib and STARTTLS; credentials come from env vars"],
  r'''
import os
import smtplib
import ssl
from email.message import EmailMessage


def send_mail(to, subject, body):
    msg = EmailMessage()
    msg["From"] = os.environ["SMTP_USER"]
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    context = ssl._create_unverified_context()
    with smtplib.SMTP(os.environ.get("SMTP_HOST", "@@rhost@@"), 587, timeout=20) as smtp:
        smtp.starttls(context=context)
        smtp.login(os.environ["SMTP_USER"], os.environ["SMTP_PASSWORD"])
        smtp.send_message(msg)
''',
  r'''
import os
import smtplib
import ssl
from email.message import EmailMessage


def send_mail(to, subject, body):
    msg = EmailMessage()
    msg["From"] = os.environ["SMTP_USER"]
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    context = ssl.create_default_context()
    with smtplib.SMTP(os.environ.get("SMTP_HOST", "@@rhost@@"), 587, timeout=20) as smtp:
        smtp.starttls(context=context)
        smtp.login(os.environ["SMTP_USER"], os.environ["SMTP_PASSWORD"])
        smtp.send_message(msg)
''',
  ["The relay host is `@@rhost@@`."]),

F("py_xss_search", "python", "xss",
  ["write a Flask route `/search` that shows the search term and a list of matching @@entities@@ as a simple HTML page (no templates)",
   "implement a quick HTML results page in Flask for @@entity@@ search, building the markup in Python",
   "create a minimal Flask view that echoes the query back (\"Results for ...\") and lists hits from `find_@@entities@@(q)`"],
  r'''
from flask import Flask, request

from .search import find_@@entities@@

app = Flask(__name__)


@app.route("/search")
def search():
    q = request.args.get("@@param@@", "")
    items = "".join(f"<li>{item['@@col@@']}</li>" for item in find_@@entities@@(q))
    return f"""<!doctype html>
<title>Search</title>
<h2>Results for {q}</h2>
<ul>{items}</ul>"""
''',
  r'''
from flask import Flask, request
from markupsafe import escape

from .search import find_@@entities@@

app = Flask(__name__)


@app.route("/search")
def search():
    q = request.args.get("@@param@@", "")
    items = "".join(f"<li>{escape(item['@@col@@'])}</li>" for item in find_@@entities@@(q))
    return f"""<!doctype html>
<title>Search</title>
<h2>Results for {escape(q)}</h2>
<ul>{items}</ul>"""
''',
  ["`find_@@entities@@` lives in `search.py`.", "The query parameter is `@@param@@`."]),

F("py_ssti_greeting", "python", "ssti",
  ["write a Flask route that renders a personalised welcome banner from a `name` query parameter with `render_template_string`",
   "implement a Flask endpoint that returns a small HTML card greeting the user, the template is inline",
   "create a Flask view for @@app@@ that shows \"Welcome back, <name>\" using Jinja inline"],
  r'''
from flask import Flask, render_template_string, request

app = Flask(__name__)


@app.route("/welcome")
def welcome():
    name = request.args.get("name", "guest")
    template = """
    <div class="card">
      <h3>Welcome back, """ + name + """!</h3>
      <p>You have {{ count }} new notifications.</p>
    </div>
    """
    return render_template_string(template, count=3)
''',
  r'''
from flask import Flask, render_template_string, request

app = Flask(__name__)

TEMPLATE = """
<div class="card">
  <h3>Welcome back, {{ name }}!</h3>
  <p>You have {{ count }} new notifications.</p>
</div>
"""


@app.route("/welcome")
def welcome():
    name = request.args.get("name", "guest")
    return render_template_string(TEMPLATE, name=name, count=3)
''',
  ["Hard-code the notification count to 3 for now."]),

F("py_open_redirect", "python", "open_redirect",
  ["write a Flask login view that, after a successful login, sends the user back to the page given in the `@@nextp@@` parameter",
   "implement the post-login redirect for our Flask app: honour `?@@nextp@@=` and default to the dashboard",
   "create a Flask `/login` POST handler that redirects to the original page after authentication"],
  r'''
from flask import Flask, redirect, request, session, url_for

from .auth import authenticate

app = Flask(__name__)


@app.route("/login", methods=["POST"])
def login():
    user = authenticate(request.form.get("username", ""), request.form.get("password", ""))
    if user is None:
        return redirect(url_for("login_form", error=1))
    session["user_id"] = user.id
    target = request.args.get("@@nextp@@") or url_for("dashboard")
    return redirect(target)
''',
  r'''
from urllib.parse import urlparse

from flask import Flask, redirect, request, session, url_for

from .auth import authenticate

app = Flask(__name__)


def local_target(value):
    if not value or value.startswith("//") or "\\" in value:
        return None
    parts = urlparse(value)
    if parts.scheme or parts.netloc or not value.startswith("/"):
        return None
    return value


@app.route("/login", methods=["POST"])
def login():
    user = authenticate(request.form.get("username", ""), request.form.get("password", ""))
    if user is None:
        return redirect(url_for("login_form", error=1))
    session.clear()
    session["user_id"] = user.id
    target = local_target(request.args.get("@@nextp@@")) or url_for("dashboard")
    return redirect(target)
''',
  ["`authenticate()` returns a user or None."]),

F("py_tempfile", "python", "insecure_tempfile",
  ["write a function that renders a PDF for @@a_entity@@ by writing HTML to a temp file and calling `wkhtmltopdf`",
   "implement `html_to_pdf(html)` that returns PDF bytes using the wkhtmltopdf CLI and temporary files",
   "create a helper that converts an HTML string to a PDF via a temporary file for our @@app@@ invoices"],
  r'''
import os
import subprocess


def html_to_pdf(html):
    src = f"/tmp/@@app@@_{os.getpid()}.html"
    dst = f"/tmp/@@app@@_{os.getpid()}.pdf"
    with open(src, "w") as fh:
        fh.write(html)
    subprocess.run(["wkhtmltopdf", "--quiet", src, dst], check=True)
    with open(dst, "rb") as fh:
        data = fh.read()
    os.remove(src)
    os.remove(dst)
    return data
''',
  r'''
import os
import subprocess
import tempfile


def html_to_pdf(html):
    with tempfile.TemporaryDirectory(prefix="@@app@@-") as tmp:
        src = os.path.join(tmp, "page.html")
        dst = os.path.join(tmp, "page.pdf")
        with open(src, "w") as fh:
            fh.write(html)
        subprocess.run(["wkhtmltopdf", "--quiet", src, dst], check=True, timeout=120)
        with open(dst, "rb") as fh:
            return fh.read()
''',
  ["wkhtmltopdf is installed on the server."]),

F("py_mktemp", "python", "insecure_tempfile",
  ["write a function that downloads a large file from a URL to a temporary path and returns the path",
   "implement `download_to_temp(url)` that streams a response to disk for later processing",
   "create a helper for the @@app@@ importer that saves a remote CSV to a temp file"],
  r'''
import tempfile

import requests


def download_to_temp(url, suffix=".csv"):
    path = tempfile.mktemp(suffix=suffix)
    with requests.get(url, stream=True, timeout=60) as resp:
        resp.raise_for_status()
        with open(path, "wb") as fh:
            for chunk in resp.iter_content(chunk_size=65536):
                fh.write(chunk)
    return path
''',
  r'''
import os
import tempfile

import requests


def download_to_temp(url, suffix=".csv"):
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with requests.get(url, stream=True, timeout=60) as resp, os.fdopen(fd, "wb") as fh:
            resp.raise_for_status()
            for chunk in resp.iter_content(chunk_size=65536):
                fh.write(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path
''',
  ["The caller deletes the file when done."]),

F("py_tar_extract", "python", "zip_slip",
  ["write a function that extracts an uploaded `.tar.gz` theme package into `@@dir@@/<theme>`",
   "implement `install_plugin(archive_path, name)` that unpacks a tarball into the plugins folder",
   "create a helper for @@app@@ that unpacks user-provided tar archives into a per-job directory"],
  r'''
import os
import tarfile

TARGET_ROOT = "@@dir@@"


def install_plugin(archive_path, name):
    dest = os.path.join(TARGET_ROOT, name)
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(archive_path, "r:*") as tar:
        tar.extractall(dest)
    return dest
''',
  r'''
import os
import re
import tarfile

TARGET_ROOT = "@@dir@@"


def install_plugin(archive_path, name):
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ValueError("invalid name")
    dest = os.path.realpath(os.path.join(TARGET_ROOT, name))
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(archive_path, "r:*") as tar:
        for member in tar.getmembers():
            target = os.path.realpath(os.path.join(dest, member.name))
            if os.path.commonpath([dest, target]) != dest:
                raise ValueError(f"archive member escapes target: {member.name}")
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"unsupported member type: {member.name}")
        tar.extractall(dest)
    return dest
''',
  ["The archives come from users."]),

F("py_zip_extract", "python", "zip_slip",
  ["write a function that unpacks an uploaded ZIP of @@ext@@ files into `@@dir@@`, skipping directories, and returns the list of written files",
   "implement `unpack_zip(zip_path, dest)` with zipfile that writes each entry and returns their paths",
   "create the import step for @@app@@ that takes a ZIP bundle and extracts its files one by one"],
  r'''
import os
import zipfile


def unpack_zip(zip_path, dest="@@dir@@"):
    written = []
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            target = os.path.join(dest, info.filename)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                out.write(src.read())
            written.append(target)
    return written
''',
  r'''
import os
import shutil
import zipfile


def unpack_zip(zip_path, dest="@@dir@@", max_total=500 * 1024 * 1024):
    root = os.path.realpath(dest)
    written, total = [], 0
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            target = os.path.realpath(os.path.join(root, info.filename))
            if os.path.commonpath([root, target]) != root:
                raise ValueError(f"bad entry name: {info.filename}")
            total += info.file_size
            if total > max_total:
                raise ValueError("archive too large")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written.append(target)
    return written
''',
  ["Skip directory entries."]),

F("py_xxe_lxml", "python", "xxe",
  ["write a function that parses an uploaded XML @@entity@@ feed with lxml and returns a list of dicts (id, @@col@@)",
   "implement the XML import for @@app@@: parse `<@@entities@@><@@entity@@ id=..><@@col@@>..</@@col@@></@@entity@@></@@entities@@>` with lxml",
   "create an lxml-based parser for partner XML uploads of @@entities@@"],
  r'''
from lxml import etree


def parse_@@entities@@(xml_bytes):
    parser = etree.XMLParser(resolve_entities=True, load_dtd=True, no_network=False)
    root = etree.fromstring(xml_bytes, parser)
    result = []
    for node in root.iter("@@entity@@"):
        result.append({"id": node.get("id"), "@@col@@": node.findtext("@@col@@")})
    return result
''',
  r'''
from lxml import etree


def parse_@@entities@@(xml_bytes):
    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False)
    root = etree.fromstring(xml_bytes, parser)
    result = []
    for node in root.iter("@@entity@@"):
        result.append({"id": node.get("id"), "@@col@@": node.findtext("@@col@@")})
    return result
''',
  ["Input is bytes from an upload."]),

F("py_mass_assignment", "python", "mass_assignment",
  ["write a Flask `PATCH /api/me` endpoint that updates the current user's profile from the JSON body (SQLAlchemy model `User`)",
   "implement a profile update route for @@app@@: the client sends the fields it wants to change",
   "create a Flask-Login protected endpoint that lets users edit their account details"],
  r'''
from flask import Flask, jsonify, request
from flask_login import current_user, login_required

from .models import db

app = Flask(__name__)


@app.route("/api/me", methods=["PATCH"])
@login_required
def update_me():
    data = request.get_json(force=True) or {}
    for key, value in data.items():
        if hasattr(current_user, key):
            setattr(current_user, key, value)
    db.session.commit()
    return jsonify(current_user.to_dict())
''',
  r'''
from flask import Flask, jsonify, request
from flask_login import current_user, login_required

from .models import db

app = Flask(__name__)
EDITABLE = {"display_name", "email", "timezone", "locale", "bio"}


@app.route("/api/me", methods=["PATCH"])
@login_required
def update_me():
    data = request.get_json(force=True) or {}
    unknown = set(data) - EDITABLE
    if unknown:
        return jsonify({"error": f"fields not editable: {', '.join(sorted(unknown))}"}), 400
    for key, value in data.items():
        setattr(current_user, key, value)
    db.session.commit()
    return jsonify(current_user.to_dict())
''',
  ["`User` has `to_dict()`."]),

F("py_webhook_compare", "python", "timing_unsafe_compare",
  ["write a Flask webhook receiver that checks the `X-Signature` header (hex HMAC-SHA256 of the body) before processing",
   "implement signature verification for incoming @@svc@@ webhooks in Flask",
   "create the endpoint that receives webhook events and verifies their HMAC; the secret is in `WEBHOOK_SECRET`"],
  r'''
import hashlib
import hmac
import os

from flask import Flask, abort, request

app = Flask(__name__)
SECRET = os.environ["WEBHOOK_SECRET"].encode()


@app.route("/webhooks/@@svc@@", methods=["POST"])
def receive():
    body = request.get_data()
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if request.headers.get("X-Signature", "") != expected:
        abort(401)
    event = request.get_json(force=True)
    handle_event(event)
    return "", 204


def handle_event(event):
    print("received", event.get("type"))
''',
  r'''
import hashlib
import hmac
import os

from flask import Flask, abort, request

app = Flask(__name__)
SECRET = os.environ["WEBHOOK_SECRET"].encode()


@app.route("/webhooks/@@svc@@", methods=["POST"])
def receive():
    body = request.get_data()
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(request.headers.get("X-Signature", ""), expected):
        abort(401)
    event = request.get_json(force=True)
    handle_event(event)
    return "", 204


def handle_event(event):
    print("received", event.get("type"))
''',
  ["Return 204 on success."]),

F("py_flask_debug", "python", "debug_mode",
  ["write the entry point `run.py` for our Flask app `@@app@@` so we can start it on the VM and reach it from the office network",
   "create a minimal Flask app with a health check and an index route, runnable with `python app.py` on port @@port@@",
   "implement the `if __name__ == \"__main__\"` block for our Flask service so we can run it on the staging box"],
  r'''
from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(service="@@app@@", status="ok")


@app.route("/healthz")
def healthz():
    return "ok", 200


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=@@port@@, debug=True)
''',
  r'''
import os

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(service="@@app@@", status="ok")


@app.route("/healthz")
def healthz():
    return "ok", 200


if __name__ == "__main__":
    app.run(
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "@@port@@")),
        debug=os.environ.get("FLASK_DEBUG") == "1",
    )
''',
  ["Port @@port@@."]),

F("py_idor_invoice", "python", "missing_authorization",
  ["write a Flask-Login route `GET /@@entities@@/<int:id>` that returns @@a_entity@@ as JSON for the logged-in user (SQLAlchemy model `@@Entity@@` with `owner_id`)",
   "implement the detail endpoint for @@entities@@ in our multi-tenant Flask app",
   "create a Flask view that loads @@a_entity@@ by id and returns its fields; users must be logged in"],
  r'''
from flask import Flask, abort, jsonify
from flask_login import login_required

from .models import @@Entity@@

app = Flask(__name__)


@app.route("/@@entities@@/<int:@@entity@@_id>")
@login_required
def get_@@entity@@(@@entity@@_id):
    obj = @@Entity@@.query.get(@@entity@@_id)
    if obj is None:
        abort(404)
    return jsonify(obj.to_dict())
''',
  r'''
from flask import Flask, abort, jsonify
from flask_login import current_user, login_required

from .models import @@Entity@@

app = Flask(__name__)


@app.route("/@@entities@@/<int:@@entity@@_id>")
@login_required
def get_@@entity@@(@@entity@@_id):
    obj = @@Entity@@.query.filter_by(id=@@entity@@_id, owner_id=current_user.id).first()
    if obj is None:
        abort(404)
    return jsonify(obj.to_dict())
''',
  ["Each @@entity@@ has an `owner_id`."]),

F("py_admin_delete", "python", "missing_authorization",
  ["write a Flask route `POST /admin/users/<int:user_id>/delete` that deletes a user account (Flask-Login; `User.role` is 'admin' or 'member')",
   "implement the delete-user action for the @@app@@ admin screen",
   "create the Flask endpoint behind the \"remove user\" button in our admin panel"],
  r'''
from flask import Flask, abort, jsonify
from flask_login import login_required

from .models import User, db

app = Flask(__name__)


@app.route("/admin/users/<int:user_id>/delete", methods=["POST"])
@login_required
def delete_user(user_id):
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    db.session.delete(user)
    db.session.commit()
    return jsonify(deleted=user_id)
''',
  r'''
from functools import wraps

from flask import Flask, abort, jsonify
from flask_login import current_user, login_required

from .models import User, db

app = Flask(__name__)


def admin_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        if getattr(current_user, "role", None) != "admin":
            abort(403)
        return view(*args, **kwargs)
    return wrapped


@app.route("/admin/users/<int:user_id>/delete", methods=["POST"])
@login_required
@admin_required
def delete_user(user_id):
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    db.session.delete(user)
    db.session.commit()
    return jsonify(deleted=user_id)
''',
  ["Return JSON with the deleted id."]),

F("py_jwt_decode", "python", "broken_authentication",
  ["write a Flask decorator `require_token` that reads a Bearer JWT (PyJWT, HS256) and puts the user id from `sub` on `g`",
   "implement JWT auth middleware for our Flask API; tokens are issued by our own auth service with a shared secret",
   "create the bearer-token check for @@app@@'s Flask API as a decorator that stores the user id on `g`"],
  r'''
from functools import wraps

import jwt
from flask import abort, g, request


def require_token(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            abort(401)
        claims = jwt.decode(header[7:], options={"verify_signature": False})
        g.user_id = claims["sub"]
        return view(*args, **kwargs)
    return wrapped
''',
  r'''
import os
from functools import wraps

import jwt
from flask import abort, g, request

SECRET = os.environ["JWT_SECRET"]


def require_token(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            abort(401)
        try:
            claims = jwt.decode(header[7:], SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]})
        except jwt.InvalidTokenError:
            abort(401)
        g.user_id = claims["sub"]
        return view(*args, **kwargs)
    return wrapped
''',
  ["The shared secret is in `JWT_SECRET`."]),

F("py_assert_authz", "python", "missing_authorization",
  ["write a service function `refund_@@entity@@(user, @@entity@@_id, amount)` that only staff users may call, then records the refund",
   "implement the permission check plus refund logic for @@app@@ support staff",
   "create a function that issues a refund on @@a_entity@@ after checking the caller is staff"],
  r'''
from decimal import Decimal

from .models import Refund, @@Entity@@, db


def refund_@@entity@@(user, @@entity@@_id, amount):
    assert user.is_staff, "staff only"
    obj = db.session.get(@@Entity@@, @@entity@@_id)
    if obj is None:
        raise LookupError(@@entity@@_id)
    amount = Decimal(str(amount))
    if amount <= 0 or amount > obj.total:
        raise ValueError("invalid amount")
    refund = Refund(@@entity@@_id=obj.id, amount=amount, issued_by=user.id)
    db.session.add(refund)
    db.session.commit()
    return refund
''',
  r'''
from decimal import Decimal

from .models import Refund, @@Entity@@, db


def refund_@@entity@@(user, @@entity@@_id, amount):
    if not getattr(user, "is_staff", False):
        raise PermissionError("staff only")
    obj = db.session.get(@@Entity@@, @@entity@@_id)
    if obj is None:
        raise LookupError(@@entity@@_id)
    amount = Decimal(str(amount))
    if amount <= 0 or amount > obj.total:
        raise ValueError("invalid amount")
    refund = Refund(@@entity@@_id=obj.id, amount=amount, issued_by=user.id)
    db.session.add(refund)
    db.session.commit()
    return refund
''',
  ["Amounts are Decimals."]),

F("py_session_cookie", "python", "insecure_cookie",
  ["write a Flask login handler that creates a server-side session id, stores it in Redis and sets it as a cookie",
   "implement cookie-based sessions for our Flask app backed by Redis (`session:<id>` keys, 8 hour TTL)",
   "create the `/login` route that issues a `sid` cookie after checking the password"],
  r'''
import uuid

import redis
from flask import Flask, jsonify, make_response, request

from .auth import authenticate

app = Flask(__name__)
store = redis.Redis(host="@@dbhost@@", port=6379)


@app.route("/login", methods=["POST"])
def login():
    user = authenticate(request.form.get("username", ""), request.form.get("password", ""))
    if user is None:
        return jsonify(error="invalid credentials"), 401
    sid = uuid.uuid1().hex
    store.setex(f"session:{sid}", 8 * 3600, user.id)
    resp = make_response(jsonify(ok=True))
    resp.set_cookie("sid", sid, max_age=8 * 3600)
    return resp
''',
  r'''
import secrets

import redis
from flask import Flask, jsonify, make_response, request

from .auth import authenticate

app = Flask(__name__)
store = redis.Redis(host="@@dbhost@@", port=6379)


@app.route("/login", methods=["POST"])
def login():
    user = authenticate(request.form.get("username", ""), request.form.get("password", ""))
    if user is None:
        return jsonify(error="invalid credentials"), 401
    sid = secrets.token_urlsafe(32)
    store.setex(f"session:{sid}", 8 * 3600, user.id)
    resp = make_response(jsonify(ok=True))
    resp.set_cookie("sid", sid, max_age=8 * 3600, httponly=True, secure=True, samesite="Lax")
    return resp
''',
  ["`authenticate` returns a user or None."]),

F("py_cors_reflect", "python", "cors_misconfiguration",
  ["write a Flask `after_request` hook that adds CORS headers so our SPA on another subdomain can call the API with cookies",
   "implement CORS for the @@app@@ Flask API without flask-cors; the frontend sends credentials",
   "create the CORS handling (including OPTIONS preflight) for a Flask JSON API"],
  r'''
from flask import Flask, request

app = Flask(__name__)


@app.after_request
def add_cors(resp):
    origin = request.headers.get("Origin")
    if origin:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Credentials"] = "true"
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
    return resp
''',
  r'''
import os

from flask import Flask, request

app = Flask(__name__)
ALLOWED_ORIGINS = set(filter(None, os.environ.get("CORS_ORIGINS", "https://app.@@app@@.example.com").split(",")))


@app.after_request
def add_cors(resp):
    origin = request.headers.get("Origin")
    if origin in ALLOWED_ORIGINS:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Credentials"] = "true"
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
        resp.headers["Vary"] = "Origin"
    return resp
''',
  ["The SPA lives on `app.@@app@@.example.com`."]),

F("py_paramiko", "python", "host_key_verification_disabled",
  ["write a paramiko function that connects to a server over SSH with a key file, runs a command and returns stdout",
   "implement `run_remote(host, cmd)` for our deploy script using paramiko and `~/.ssh/id_ed25519`",
   "create an SSH helper that executes a command on `@@rhost@@` as `@@user@@`"],
  r'''
import os

import paramiko


def run_remote(host, cmd, user="@@user@@", key_path="~/.ssh/id_ed25519"):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(host, username=user, key_filename=os.path.expanduser(key_path), timeout=15)
    try:
        _, stdout, stderr = client.exec_command(cmd)
        code = stdout.channel.recv_exit_status()
        if code != 0:
            raise RuntimeError(stderr.read().decode())
        return stdout.read().decode()
    finally:
        client.close()
''',
  r'''
import os

import paramiko


def run_remote(host, cmd, user="@@user@@", key_path="~/.ssh/id_ed25519"):
    client = paramiko.SSHClient()
    client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host, username=user, key_filename=os.path.expanduser(key_path), timeout=15)
    try:
        _, stdout, stderr = client.exec_command(cmd)
        code = stdout.channel.recv_exit_status()
        if code != 0:
            raise RuntimeError(stderr.read().decode())
        return stdout.read().decode()
    finally:
        client.close()
''',
  ["Raise if the command exits non-zero."]),
]
