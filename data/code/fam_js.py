"""JavaScript / Node.js task families (Express handlers, crypto, files)."""
from famlib import F

FAMILIES = [
F("js_express_mysql", "javascript", "sql_injection",
  ["write an Express route `GET /api/@@entities@@/:id` that reads one row from the MySQL table `@@table@@` with mysql2",
   "add an Express endpoint that returns @@a_entity@@ by id from MySQL as JSON (404 if missing)",
   "create the Node handler for fetching a single @@entity@@ from our MySQL database"],
  r'''
const express = require('express');
const mysql = require('mysql2/promise');

const pool = mysql.createPool({
  host: process.env.DB_HOST,
  user: process.env.DB_USER,
  password: process.env.DB_PASSWORD,
  database: '@@app@@',
});
const router = express.Router();

router.get('/api/@@entities@@/:id', async (req, res, next) => {
  try {
    const [rows] = await pool.query(`SELECT * FROM @@table@@ WHERE id = ${req.params.id}`);
    if (rows.length === 0) return res.status(404).json({ error: 'not found' });
    res.json(rows[0]);
  } catch (err) {
    next(err);
  }
});

module.exports = router;
''',
  r'''
const express = require('express');
const mysql = require('mysql2/promise');

const pool = mysql.createPool({
  host: process.env.DB_HOST,
  user: process.env.DB_USER,
  password: process.env.DB_PASSWORD,
  database: '@@app@@',
});
const router = express.Router();

router.get('/api/@@entities@@/:id', async (req, res, next) => {
  const id = Number.parseInt(req.params.id, 10);
  if (!Number.isSafeInteger(id)) return res.status(400).json({ error: 'bad id' });
  try {
    const [rows] = await pool.execute('SELECT * FROM @@table@@ WHERE id = ?', [id]);
    if (rows.length === 0) return res.status(404).json({ error: 'not found' });
    res.json(rows[0]);
  } catch (err) {
    next(err);
  }
});

module.exports = router;
''',
  ["Use a connection pool.", "Export an Express router."]),

F("js_pg_search", "javascript", "sql_injection",
  ["write a node-postgres function `search@@Entities@@(term)` that finds @@entities@@ whose `@@col@@` contains the term",
   "implement the search query behind `GET /search?@@param@@=` in our Express + pg app",
   "create a pg helper that returns matching @@entities@@ ordered by `@@col@@`"],
  r'''
const { Pool } = require('pg');

const pool = new Pool();

async function search@@Entities@@(term, limit = 25) {
  const sql = "SELECT id, @@col@@, @@col2@@ FROM @@table@@ WHERE @@col@@ ILIKE '%" + term + "%' ORDER BY @@col@@ LIMIT " + limit;
  const { rows } = await pool.query(sql);
  return rows;
}

module.exports = { search@@Entities@@ };
''',
  r'''
const { Pool } = require('pg');

const pool = new Pool();

async function search@@Entities@@(term, limit = 25) {
  const pattern = '%' + String(term).replace(/[\\%_]/g, (c) => '\\' + c) + '%';
  const size = Math.min(Math.max(Number.parseInt(limit, 10) || 25, 1), 100);
  const { rows } = await pool.query(
    'SELECT id, @@col@@, @@col2@@ FROM @@table@@ WHERE @@col@@ ILIKE $1 ORDER BY @@col@@ LIMIT $2',
    [pattern, size],
  );
  return rows;
}

module.exports = { search@@Entities@@ };
''',
  ["Connection settings come from the usual PG* env vars."]),

F("js_exec_dns", "javascript", "command_injection",
  ["write an Express route `/tools/dig` that runs `dig +short` on a domain from the query string and returns the records",
   "implement a DNS lookup endpoint for our support tools using the `dig` binary",
   "create a Node handler that shells out to `nslookup`/`dig` for a user-supplied domain"],
  r'''
const express = require('express');
const { exec } = require('child_process');

const app = express();

app.get('/tools/dig', (req, res) => {
  const domain = req.query.domain || '';
  const type = req.query.type || 'A';
  exec(`dig +short ${domain} ${type}`, { timeout: 10000 }, (err, stdout, stderr) => {
    if (err) return res.status(500).json({ error: stderr || err.message });
    res.json({ domain, type, records: stdout.trim().split('\n').filter(Boolean) });
  });
});

app.listen(@@port@@);
''',
  r'''
const express = require('express');
const { execFile } = require('child_process');

const app = express();
const DOMAIN_RE = /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$/;
const TYPES = new Set(['A', 'AAAA', 'MX', 'TXT', 'CNAME', 'NS']);

app.get('/tools/dig', (req, res) => {
  const domain = String(req.query.domain || '');
  const type = String(req.query.type || 'A').toUpperCase();
  if (!DOMAIN_RE.test(domain) || !TYPES.has(type)) {
    return res.status(400).json({ error: 'invalid domain or type' });
  }
  execFile('dig', ['+short', domain, type], { timeout: 10000 }, (err, stdout, stderr) => {
    if (err) return res.status(500).json({ error: 'lookup failed' });
    res.json({ domain, type, records: stdout.trim().split('\n').filter(Boolean) });
  });
});

app.listen(@@port@@, '127.0.0.1');
''',
  ["The record type is optional and defaults to A."]),

F("js_ffmpeg", "javascript", "command_injection",
  ["write a Node function `transcode(input, format)` that converts an uploaded media file with ffmpeg and resolves with the output path",
   "implement an audio conversion helper for @@app@@ that calls ffmpeg via child_process",
   "create a promise-based wrapper around ffmpeg for converting uploads in `@@dir@@`"],
  r'''
const { exec } = require('child_process');
const path = require('path');

function transcode(input, format = 'mp3') {
  const output = path.join('@@dir@@', path.parse(input).name + '.' + format);
  return new Promise((resolve, reject) => {
    exec(`ffmpeg -y -i "${input}" ${output}`, (err) => {
      if (err) return reject(err);
      resolve(output);
    });
  });
}

module.exports = { transcode };
''',
  r'''
const { execFile } = require('child_process');
const path = require('path');

const FORMATS = new Set(['mp3', 'ogg', 'wav', 'm4a']);

function transcode(input, format = 'mp3') {
  if (!FORMATS.has(format)) return Promise.reject(new Error('unsupported format'));
  const output = path.join('@@dir@@', path.parse(input).name + '.' + format);
  return new Promise((resolve, reject) => {
    execFile('ffmpeg', ['-y', '-i', input, '--', output], { timeout: 300000 }, (err) => {
      if (err) return reject(err);
      resolve(output);
    });
  });
}

module.exports = { transcode };
''',
  ["Output goes to `@@dir@@`."]),

F("js_static_file", "javascript", "path_traversal",
  ["write an Express route `/docs/:name` that sends a file from the `@@dirname@@` folder next to the server script",
   "implement a download endpoint in Express that reads a file named in the URL from the `@@dirname@@` folder",
   "create a Node HTTP handler that serves stored @@ext@@ files by name"],
  r'''
const express = require('express');
const fs = require('fs');
const path = require('path');

const app = express();
const BASE = path.join(__dirname, '@@dirname@@');

app.get('/docs/:name', (req, res) => {
  const file = path.join(BASE, req.params.name);
  fs.readFile(file, (err, data) => {
    if (err) return res.status(404).send('Not found');
    res.type(path.extname(file)).send(data);
  });
});

app.listen(@@port@@);
''',
  r'''
const express = require('express');
const path = require('path');

const app = express();
const BASE = path.join(__dirname, '@@dirname@@');

app.get('/docs/:name', (req, res) => {
  res.sendFile(req.params.name, { root: BASE, dotfiles: 'deny' }, (err) => {
    if (err && !res.headersSent) res.status(404).send('Not found');
  });
});

app.listen(@@port@@, '127.0.0.1');
''',
  ["Respond 404 if missing."]),

F("js_xss_send", "javascript", "xss",
  ["write an Express route that renders a small HTML page showing \"No results for <query>\" or the list of @@entities@@ found",
   "implement the server-rendered search results page for @@app@@ with template literals (no view engine)",
   "create an Express handler for `/search?@@param@@=` that lists matching @@entities@@ as HTML and says so when nothing matches"],
  r'''
const express = require('express');
const { find@@Entities@@ } = require('./store');

const app = express();

app.get('/search', async (req, res) => {
  const q = req.query.@@param@@ || '';
  const items = await find@@Entities@@(q);
  const body = items.length
    ? `<ul>${items.map((i) => `<li>${i.@@col@@}</li>`).join('')}</ul>`
    : `<p>No results for ${q}</p>`;
  res.send(`<!doctype html><title>Search</title><h1>Search</h1>${body}`);
});

app.listen(@@port@@);
''',
  r'''
const express = require('express');
const { find@@Entities@@ } = require('./store');

const app = express();

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

app.get('/search', async (req, res) => {
  const q = String(req.query.@@param@@ || '');
  const items = await find@@Entities@@(q);
  const body = items.length
    ? `<ul>${items.map((i) => `<li>${esc(i.@@col@@)}</li>`).join('')}</ul>`
    : `<p>No results for ${esc(q)}</p>`;
  res.send(`<!doctype html><title>Search</title><h1>Search</h1>${body}`);
});

app.listen(@@port@@, '127.0.0.1');
''',
  ["`find@@Entities@@` comes from `./store`."]),

F("js_open_redirect", "javascript", "open_redirect",
  ["write an Express logout route that clears the session and redirects to the URL in `?@@nextp@@=`",
   "implement the redirect-after-login step in our Express app using a `@@nextp@@` query parameter",
   "create an Express handler `/go` that forwards the user to the page they came from"],
  r'''
const express = require('express');

const router = express.Router();

router.get('/logout', (req, res) => {
  const target = req.query.@@nextp@@ || '/';
  req.session.destroy(() => {
    res.clearCookie('connect.sid');
    res.redirect(target);
  });
});

module.exports = router;
''',
  r'''
const express = require('express');

const router = express.Router();

function localPath(value) {
  if (typeof value !== 'string' || !value.startsWith('/') || value.startsWith('//') || value.includes('\\')) {
    return '/';
  }
  return value;
}

router.get('/logout', (req, res) => {
  const target = localPath(req.query.@@nextp@@);
  req.session.destroy(() => {
    res.clearCookie('connect.sid');
    res.redirect(target);
  });
});

module.exports = router;
''',
  ["We use express-session."]),

F("js_eval_json", "javascript", "code_eval",
  ["write a Node function that parses the config blob our old admin UI posts (it looks like a JS object literal) and returns the object",
   "implement the parsing step that turns the filter definition string our client sends into an object",
   "create a helper `parseSettings(text)` for @@app@@ that reads settings sent as text"],
  r'''
function parseSettings(text) {
  if (!text || !text.trim()) return {};
  return eval('(' + text + ')');
}

module.exports = { parseSettings };
''',
  r'''
function parseSettings(text) {
  if (!text || !text.trim()) return {};
  const value = JSON.parse(text);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error('settings must be a JSON object');
  }
  return value;
}

module.exports = { parseSettings };
''',
  ["Empty input should return an empty object."]),

F("js_jwt_secret", "javascript", "hardcoded_secret",
  ["write Express middleware that issues a JWT on login and verifies it on protected routes (jsonwebtoken)",
   "implement `signToken(user)` and `requireAuth` for our Node API",
   "create the token helpers for @@app@@'s Express backend (sign on login, verify on every request)"],
  r'''
const jwt = require('jsonwebtoken');

const JWT_SECRET = '@@secret@@';

function signToken(user) {
  return jwt.sign({ sub: String(user.id), role: user.role }, JWT_SECRET, { expiresIn: '12h' });
}

function requireAuth(req, res, next) {
  const header = req.get('Authorization') || '';
  const token = header.startsWith('Bearer ') ? header.slice(7) : null;
  if (!token) return res.status(401).json({ error: 'missing token' });
  try {
    req.user = jwt.verify(token, JWT_SECRET);
    next();
  } catch (err) {
    res.status(401).json({ error: 'invalid token' });
  }
}

module.exports = { signToken, requireAuth };
''',
  r'''
const jwt = require('jsonwebtoken');

const JWT_SECRET = process.env.JWT_SECRET;
if (!JWT_SECRET) throw new Error('JWT_SECRET is not set');

function signToken(user) {
  return jwt.sign({ sub: String(user.id), role: user.role }, JWT_SECRET, { expiresIn: '12h', algorithm: 'HS256' });
}

function requireAuth(req, res, next) {
  const header = req.get('Authorization') || '';
  const token = header.startsWith('Bearer ') ? header.slice(7) : null;
  if (!token) return res.status(401).json({ error: 'missing token' });
  try {
    req.user = jwt.verify(token, JWT_SECRET, { algorithms: ['HS256'] });
    next();
  } catch (err) {
    res.status(401).json({ error: 'invalid token' });
  }
}

module.exports = { signToken, requireAuth };
''',
  ["Tokens should last 12 hours."]),

F("js_md5_password", "javascript", "weak_password_hash",
  ["write `hashPassword` and `checkPassword` in Node using only the built-in crypto module",
   "implement password hashing for the @@app@@ signup endpoint without adding bcrypt",
   "create the password helpers our Express auth routes need (node:crypto only)"],
  r'''
const crypto = require('crypto');

function hashPassword(password) {
  return crypto.createHash('md5').update(password).digest('hex');
}

function checkPassword(password, stored) {
  return hashPassword(password) === stored;
}

module.exports = { hashPassword, checkPassword };
''',
  r'''
const crypto = require('crypto');

const KEYLEN = 64;

function hashPassword(password) {
  const salt = crypto.randomBytes(16);
  const hash = crypto.scryptSync(password, salt, KEYLEN);
  return `${salt.toString('hex')}:${hash.toString('hex')}`;
}

function checkPassword(password, stored) {
  const [saltHex, hashHex] = String(stored).split(':');
  if (!saltHex || !hashHex) return false;
  const expected = Buffer.from(hashHex, 'hex');
  const actual = crypto.scryptSync(password, Buffer.from(saltHex, 'hex'), expected.length);
  return expected.length === actual.length && crypto.timingSafeEqual(expected, actual);
}

module.exports = { hashPassword, checkPassword };
''',
  ["Synchronous versions are fine."]),

F("js_math_random_token", "javascript", "weak_randomness",
  ["write a Node function that generates invite codes for @@app@@ (24 characters, letters and digits)",
   "implement `makeToken()` for our developer portal that returns a random API key string",
   "create a helper that generates session ids for a custom Express session store"],
  r'''
const CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function makeToken(length = 24) {
  let out = '';
  for (let i = 0; i < length; i += 1) {
    out += CHARS[Math.floor(Math.random() * CHARS.length)];
  }
  return out;
}

module.exports = { makeToken };
''',
  r'''
const crypto = require('crypto');

const CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function makeToken(length = 24) {
  let out = '';
  for (let i = 0; i < length; i += 1) {
    out += CHARS[crypto.randomInt(CHARS.length)];
  }
  return out;
}

module.exports = { makeToken };
''',
  ["Letters and digits only."]),

F("js_mass_assign", "javascript", "mass_assignment",
  ["write an Express `PUT /api/users/:id` handler (Mongoose `User` model) that updates a user's profile from the request body",
   "implement the profile edit endpoint for @@app@@ with Mongoose",
   "create an Express route that lets a logged-in user update their own account document"],
  r'''
const express = require('express');
const User = require('../models/user');

const router = express.Router();

router.put('/api/users/:id', async (req, res, next) => {
  try {
    if (String(req.user.id) !== req.params.id) return res.status(403).json({ error: 'forbidden' });
    const user = await User.findByIdAndUpdate(req.params.id, req.body, { new: true });
    if (!user) return res.status(404).json({ error: 'not found' });
    res.json(user);
  } catch (err) {
    next(err);
  }
});

module.exports = router;
''',
  r'''
const express = require('express');
const User = require('../models/user');

const router = express.Router();
const EDITABLE = ['displayName', 'email', 'timezone', 'bio', 'avatarUrl'];

router.put('/api/users/:id', async (req, res, next) => {
  try {
    if (String(req.user.id) !== req.params.id) return res.status(403).json({ error: 'forbidden' });
    const update = {};
    for (const key of EDITABLE) {
      if (Object.prototype.hasOwnProperty.call(req.body, key)) update[key] = req.body[key];
    }
    const user = await User.findByIdAndUpdate(req.params.id, { $set: update }, { new: true, runValidators: true });
    if (!user) return res.status(404).json({ error: 'not found' });
    res.json(user);
  } catch (err) {
    next(err);
  }
});

module.exports = router;
''',
  ["`req.user` is set by our auth middleware."]),

F("js_ssrf_fetch", "javascript", "ssrf",
  ["write an Express endpoint `/api/fetch-image` that downloads an image from a URL the user provides and returns it",
   "implement an image proxy route in Node for @@app@@ so avatars from other sites load over our domain",
   "create an Express handler that fetches a remote URL (`?@@urlp@@=`) server-side with axios and pipes it back"],
  r'''
const express = require('express');
const axios = require('axios');

const app = express();

app.get('/api/fetch-image', async (req, res) => {
  try {
    const upstream = await axios.get(req.query.@@urlp@@, { responseType: 'stream', timeout: 8000 });
    res.set('Content-Type', upstream.headers['content-type'] || 'application/octet-stream');
    upstream.data.pipe(res);
  } catch (err) {
    res.status(502).json({ error: 'fetch failed' });
  }
});

app.listen(@@port@@);
''',
  r'''
const express = require('express');
const axios = require('axios');
const dns = require('dns').promises;
const net = require('net');

const app = express();

function isPrivate(ip) {
  if (net.isIPv4(ip)) {
    const [a, b] = ip.split('.').map(Number);
    return a === 10 || a === 127 || a === 0 || (a === 169 && b === 254) || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || a >= 224;
  }
  const v6 = ip.toLowerCase();
  return v6 === '::1' || v6 === '::' || v6.startsWith('fc') || v6.startsWith('fd') || v6.startsWith('fe80') || v6.startsWith('::ffff:');
}

app.get('/api/fetch-image', async (req, res) => {
  let url;
  try {
    url = new URL(String(req.query.@@urlp@@ || ''));
  } catch (err) {
    return res.status(400).json({ error: 'bad url' });
  }
  if (!['http:', 'https:'].includes(url.protocol)) return res.status(400).json({ error: 'bad url' });
  const addrs = await dns.lookup(url.hostname, { all: true }).catch(() => []);
  if (addrs.length === 0 || addrs.some((a) => isPrivate(a.address))) {
    return res.status(400).json({ error: 'host not allowed' });
  }
  try {
    const upstream = await axios.get(url.href, { responseType: 'stream', timeout: 8000, maxRedirects: 0, maxContentLength: 5 * 1024 * 1024 });
    const type = String(upstream.headers['content-type'] || '');
    if (!type.startsWith('image/')) return res.status(415).json({ error: 'not an image' });
    res.set('Content-Type', type);
    upstream.data.pipe(res);
  } catch (err) {
    res.status(502).json({ error: 'fetch failed' });
  }
});

app.listen(@@port@@, '127.0.0.1');
''',
  ["Use axios."]),

F("js_tls_reject", "javascript", "tls_verification_disabled",
  ["write a Node script that calls our internal billing API at `https://@@rhost@@/api/@@entities@@` with axios and prints the JSON (the server has a self-signed cert)",
   "implement a small axios client for the `@@rhost@@` service; requests currently fail with a certificate error",
   "create a Node function that pulls the @@entities@@ list from our partner's HTTPS endpoint using axios"],
  r'''
const axios = require('axios');
const https = require('https');

const client = axios.create({
  baseURL: 'https://@@rhost@@/api',
  timeout: 10000,
  httpsAgent: new https.Agent({ rejectUnauthorized: false }),
  headers: { Authorization: `Bearer ${process.env.BILLING_TOKEN}` },
});

async function list@@Entities@@() {
  const { data } = await client.get('/@@entities@@');
  return data;
}

list@@Entities@@().then((d) => console.log(JSON.stringify(d, null, 2))).catch((e) => {
  console.error(e.message);
  process.exit(1);
});
''',
  r'''
const axios = require('axios');
const fs = require('fs');
const https = require('https');

const client = axios.create({
  baseURL: 'https://@@rhost@@/api',
  timeout: 10000,
  httpsAgent: new https.Agent({ ca: fs.readFileSync(process.env.BILLING_CA_CERT || '/etc/ssl/@@app@@/billing-ca.pem') }),
  headers: { Authorization: `Bearer ${process.env.BILLING_TOKEN}` },
});

async function list@@Entities@@() {
  const { data } = await client.get('/@@entities@@');
  return data;
}

list@@Entities@@().then((d) => console.log(JSON.stringify(d, null, 2))).catch((e) => {
  console.error(e.message);
  process.exit(1);
});
''',
  ["The token is in `BILLING_TOKEN`."]),

F("js_idor_orders", "javascript", "missing_authorization",
  ["write an Express route `GET /api/@@entities@@/:id` that returns @@a_entity@@ for the logged-in user (Sequelize model `@@Entity@@`, column `userId`)",
   "implement the @@entity@@ detail endpoint for our Express + Sequelize app",
   "create an authenticated Express handler that loads @@a_entity@@ by primary key and returns it"],
  r'''
const express = require('express');
const { @@Entity@@ } = require('../models');
const requireLogin = require('../middleware/requireLogin');

const router = express.Router();

router.get('/api/@@entities@@/:id', requireLogin, async (req, res, next) => {
  try {
    const item = await @@Entity@@.findByPk(req.params.id);
    if (!item) return res.status(404).json({ error: 'not found' });
    res.json(item);
  } catch (err) {
    next(err);
  }
});

module.exports = router;
''',
  r'''
const express = require('express');
const { @@Entity@@ } = require('../models');
const requireLogin = require('../middleware/requireLogin');

const router = express.Router();

router.get('/api/@@entities@@/:id', requireLogin, async (req, res, next) => {
  try {
    const item = await @@Entity@@.findOne({ where: { id: req.params.id, userId: req.user.id } });
    if (!item) return res.status(404).json({ error: 'not found' });
    res.json(item);
  } catch (err) {
    next(err);
  }
});

module.exports = router;
''',
  ["`requireLogin` sets `req.user`."]),

F("js_nosql_login", "javascript", "nosql_injection",
  ["write an Express route `POST /login/code` that signs a user in with their email and the 6-digit code we emailed them (Mongoose `User` has `email`, `loginCode`, `loginCodeExpires`)",
   "implement the passwordless login step for @@app@@: check the emailed code against MongoDB and start a session",
   "create a Node handler that verifies an email + one-time code pair stored on the user document in Mongo"],
  r'''
const express = require('express');
const User = require('../models/user');

const router = express.Router();

router.post('/login/code', async (req, res) => {
  const user = await User.findOne({
    email: req.body.email,
    loginCode: req.body.code,
    loginCodeExpires: { $gt: new Date() },
  });
  if (!user) return res.status(401).json({ error: 'invalid or expired code' });
  user.loginCode = null;
  await user.save();
  req.session.userId = user.id;
  res.json({ ok: true });
});

module.exports = router;
''',
  r'''
const express = require('express');
const crypto = require('crypto');
const User = require('../models/user');

const router = express.Router();

router.post('/login/code', async (req, res) => {
  const { email, code } = req.body;
  if (typeof email !== 'string' || typeof code !== 'string' || !/^\d{6}$/.test(code)) {
    return res.status(400).json({ error: 'email and 6-digit code are required' });
  }
  const user = await User.findOne({ email: { $eq: email.toLowerCase() }, loginCodeExpires: { $gt: new Date() } });
  const ok = user && typeof user.loginCode === 'string' && user.loginCode.length === code.length
    && crypto.timingSafeEqual(Buffer.from(user.loginCode), Buffer.from(code));
  if (!ok) return res.status(401).json({ error: 'invalid or expired code' });
  user.loginCode = null;
  await user.save();
  req.session.regenerate((err) => {
    if (err) return res.status(500).json({ error: 'session error' });
    req.session.userId = user.id;
    res.json({ ok: true });
  });
});

module.exports = router;
''',
  ["Sessions via express-session.", "Clear the code after use."]),

F("js_write_mode", "javascript", "permissive_permissions",
  ["write a Node function that saves an uploaded @@ext@@ buffer to `@@dir@@` under a generated name and returns the path",
   "implement `storeUpload(buffer, originalName)` for @@app@@ that writes files to disk",
   "create a helper that writes generated reports to `@@dir@@` and makes the folder if needed"],
  r'''
const crypto = require('crypto');
const fs = require('fs/promises');
const path = require('path');

const DIR = '@@dir@@';

async function storeUpload(buffer, originalName) {
  await fs.mkdir(DIR, { recursive: true, mode: 0o777 });
  const name = crypto.randomUUID() + path.extname(originalName).toLowerCase();
  const target = path.join(DIR, name);
  await fs.writeFile(target, buffer, { mode: 0o777 });
  return target;
}

module.exports = { storeUpload };
''',
  r'''
const crypto = require('crypto');
const fs = require('fs/promises');
const path = require('path');

const DIR = '@@dir@@';

async function storeUpload(buffer, originalName) {
  await fs.mkdir(DIR, { recursive: true, mode: 0o750 });
  const ext = path.extname(originalName).toLowerCase().replace(/[^a-z0-9.]/g, '');
  const target = path.join(DIR, crypto.randomUUID() + ext);
  await fs.writeFile(target, buffer, { mode: 0o640, flag: 'wx' });
  return target;
}

module.exports = { storeUpload };
''',
  ["Use fs/promises."]),

F("js_deep_merge", "javascript", "prototype_pollution",
  ["write a `deepMerge(target, source)` utility to apply user settings JSON on top of defaults in our Node app",
   "implement a recursive merge for @@app@@ config overrides coming from the request body",
   "create a small deep-merge helper (no lodash) for nested settings objects"],
  r'''
function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function deepMerge(target, source) {
  for (const key in source) {
    if (isObject(source[key])) {
      if (!isObject(target[key])) target[key] = {};
      deepMerge(target[key], source[key]);
    } else {
      target[key] = source[key];
    }
  }
  return target;
}

module.exports = { deepMerge };
''',
  r'''
function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

const BLOCKED = new Set(['__proto__', 'constructor', 'prototype']);

function deepMerge(target, source) {
  for (const key of Object.keys(source)) {
    if (BLOCKED.has(key)) continue;
    if (isObject(source[key])) {
      if (!isObject(target[key]) || !Object.prototype.hasOwnProperty.call(target, key)) {
        target[key] = Object.create(null);
      }
      deepMerge(target[key], source[key]);
    } else {
      target[key] = source[key];
    }
  }
  return target;
}

module.exports = { deepMerge };
''',
  ["Arrays should be replaced, not merged."]),

F("js_zip_extract", "javascript", "zip_slip",
  ["write a Node function that extracts an uploaded ZIP with adm-zip into `@@dir@@/<jobId>` entry by entry",
   "implement `unpackBundle(zipPath, jobId)` for @@app@@ using adm-zip",
   "create an import helper in Node that unpacks a zip of @@ext@@ files into a work folder"],
  r'''
const AdmZip = require('adm-zip');
const fs = require('fs');
const path = require('path');

function unpackBundle(zipPath, jobId) {
  const dest = path.join('@@dir@@', String(jobId));
  const zip = new AdmZip(zipPath);
  const written = [];
  for (const entry of zip.getEntries()) {
    if (entry.isDirectory) continue;
    const target = path.join(dest, entry.entryName);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, entry.getData());
    written.push(target);
  }
  return written;
}

module.exports = { unpackBundle };
''',
  r'''
const AdmZip = require('adm-zip');
const fs = require('fs');
const path = require('path');

function unpackBundle(zipPath, jobId) {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(String(jobId))) throw new Error('bad job id');
  const dest = path.resolve('@@dir@@', String(jobId));
  const zip = new AdmZip(zipPath);
  const written = [];
  for (const entry of zip.getEntries()) {
    if (entry.isDirectory) continue;
    const target = path.resolve(dest, entry.entryName);
    if (!target.startsWith(dest + path.sep)) throw new Error(`bad entry: ${entry.entryName}`);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, entry.getData());
    written.push(target);
  }
  return written;
}

module.exports = { unpackBundle };
''',
  ["Return the list of written paths."]),

F("js_timing_apikey", "javascript", "timing_unsafe_compare",
  ["write Express middleware that checks the `X-API-Key` header against the key in `API_KEY`",
   "implement a simple API-key guard for the internal endpoints of @@app@@",
   "create middleware `requireApiKey` for our Node service-to-service calls"],
  r'''
function requireApiKey(req, res, next) {
  const provided = req.get('X-API-Key') || '';
  if (provided !== process.env.API_KEY) {
    return res.status(401).json({ error: 'unauthorized' });
  }
  next();
}

module.exports = { requireApiKey };
''',
  r'''
const crypto = require('crypto');

function digest(value) {
  return crypto.createHash('sha256').update(String(value)).digest();
}

function requireApiKey(req, res, next) {
  const expected = process.env.API_KEY;
  const provided = req.get('X-API-Key') || '';
  if (!expected || !crypto.timingSafeEqual(digest(provided), digest(expected))) {
    return res.status(401).json({ error: 'unauthorized' });
  }
  next();
}

module.exports = { requireApiKey };
''',
  ["Respond 401 JSON on failure."]),

F("js_ecb_cipher", "javascript", "weak_cipher",
  ["write Node `encrypt(text)` / `decrypt(hex)` helpers with AES-256 for storing @@col@@ values; the key is hex in `DATA_KEY`",
   "implement field-level encryption for @@app@@ in Node's crypto module",
   "create a tiny crypto helper to encrypt tokens before writing them to the `@@table@@` table"],
  r'''
const crypto = require('crypto');

const KEY = Buffer.from(process.env.DATA_KEY, 'hex');

function encrypt(text) {
  const cipher = crypto.createCipheriv('aes-256-ecb', KEY, null);
  return Buffer.concat([cipher.update(text, 'utf8'), cipher.final()]).toString('hex');
}

function decrypt(hex) {
  const decipher = crypto.createDecipheriv('aes-256-ecb', KEY, null);
  return Buffer.concat([decipher.update(Buffer.from(hex, 'hex')), decipher.final()]).toString('utf8');
}

module.exports = { encrypt, decrypt };
''',
  r'''
const crypto = require('crypto');

const KEY = Buffer.from(process.env.DATA_KEY, 'hex');

function encrypt(text) {
  const iv = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', KEY, iv);
  const body = Buffer.concat([cipher.update(text, 'utf8'), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), body]).toString('hex');
}

function decrypt(hex) {
  const raw = Buffer.from(hex, 'hex');
  const decipher = crypto.createDecipheriv('aes-256-gcm', KEY, raw.subarray(0, 12));
  decipher.setAuthTag(raw.subarray(12, 28));
  return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
}

module.exports = { encrypt, decrypt };
''',
  ["Output hex strings."]),

F("js_error_stack", "javascript", "information_exposure",
  ["write the final error-handling middleware for our Express API so clients get a JSON error",
   "implement an Express error handler for @@app@@ that returns JSON with the error details",
   "create a catch-all Express error middleware plus a 404 handler"],
  r'''
function notFound(req, res) {
  res.status(404).json({ error: 'not found', path: req.originalUrl });
}

function errorHandler(err, req, res, next) {
  const status = err.status || 500;
  res.status(status).json({
    error: err.message,
    stack: err.stack,
    query: err.sql,
    env: process.env.NODE_ENV,
  });
}

module.exports = { notFound, errorHandler };
''',
  r'''
function notFound(req, res) {
  res.status(404).json({ error: 'not found' });
}

function errorHandler(err, req, res, next) {
  const status = Number.isInteger(err.status) && err.status >= 400 && err.status < 600 ? err.status : 500;
  console.error(err);
  res.status(status).json({ error: status < 500 ? err.message : 'internal server error' });
}

module.exports = { notFound, errorHandler };
''',
  ["Log it server-side too."]),
]
