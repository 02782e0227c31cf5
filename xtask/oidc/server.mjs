// A real OpenID provider (panva/oidc-provider) on loopback, for chgate's interop tests.
//
// It issues JWT access tokens (RS256, `typ: at+jwt`) through the client_credentials grant with
// a resource indicator (`resource=<audience>`), signed with RSA keys generated at start, and
// publishes them at the JWKS URI named by its discovery document. Started (and installed) by
// xtask/src/oidc_provider.rs; the packages live under .local/oidc/node_modules.
//
// Environment:
//   OIDC_PORT       port to listen on, on 127.0.0.1 (default 18124); the issuer is
//                   http://127.0.0.1:<port>
//   OIDC_AUDIENCES  comma-separated resource indicators (audiences) tokens may be issued for;
//                   the first is the default resource (default api://chgate). Others are
//                   refused with invalid_target.
//   OIDC_CLIENTS    JSON array of clients, each
//                   {"client_id": "...", "client_secret": "...", "claims": {...}}: confidential
//                   clients (client_secret_basic, grant client_credentials, scope api.read);
//                   `claims` (optional) are added to every access token issued to that client.
//
// Test-only endpoints (answered for loopback callers only):
//   GET  /test/health  200 {"ok": true, "kid": <signing kid>, "kids": [...published kids]}
//   POST /test/rotate  generates a new RSA key with a new kid and makes it the signing key; the
//                      JWKS then lists the new key first and still every earlier one (as real
//                      identity providers do during a rotation), so tokens issued before stay
//                      verifiable. Answers like /test/health.
//
// Rotation builds a new Provider instance (same issuer, clients and configuration, the new key
// set) and swaps which instance the HTTP server dispatches to; nothing restarts.

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const SCOPE = 'api.read';
const ACCESS_TOKEN_TTL = 600;

function fail(message) {
  console.error(`oidc-provider: ${message}`);
  process.exit(2);
}

const port = Number.parseInt(process.env.OIDC_PORT ?? '18124', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  fail(`OIDC_PORT is not a port number: ${process.env.OIDC_PORT}`);
}
const issuer = `http://${HOST}:${port}`;

const audiences = (process.env.OIDC_AUDIENCES ?? 'api://chgate')
  .split(',')
  .map((audience) => audience.trim())
  .filter(Boolean);
if (audiences.length === 0) {
  fail('OIDC_AUDIENCES names no audience');
}
const defaultAudience = audiences[0];

function parseClients(text) {
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    fail(`OIDC_CLIENTS is not JSON: ${error.message}`);
  }
  if (!Array.isArray(parsed)) {
    fail('OIDC_CLIENTS must be a JSON array');
  }
  const seen = new Set();
  return parsed.map((entry, index) => {
    const { client_id: clientId, client_secret: clientSecret, claims = {} } = entry ?? {};
    if (typeof clientId !== 'string' || !clientId) {
      fail(`OIDC_CLIENTS[${index}] has no client_id`);
    }
    if (typeof clientSecret !== 'string' || !clientSecret) {
      fail(`OIDC_CLIENTS[${index}] (${clientId}) has no client_secret`);
    }
    if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
      fail(`OIDC_CLIENTS[${index}] (${clientId}): claims must be a JSON object`);
    }
    if (seen.has(clientId)) {
      fail(`OIDC_CLIENTS names ${clientId} twice`);
    }
    seen.add(clientId);
    return { clientId, clientSecret, claims };
  });
}

const clients = parseClients(process.env.OIDC_CLIENTS ?? '[]');
const claimsByClient = new Map(clients.map(({ clientId, claims }) => [clientId, claims]));
const clientMetadata = clients.map(({ clientId, clientSecret }) => ({
  client_id: clientId,
  client_secret: clientSecret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
  scope: SCOPE,
}));

// Cookies are not used by the client_credentials grant, but the provider wants keys for them;
// they are kept across rotations like the rest of the configuration.
const cookieKeys = [randomBytes(32).toString('base64url')];

// Newest first: the first key signs, all are published.
const signingKeys = [];

function newSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    ...jwk, kid: randomUUID(), alg: 'RS256', use: 'sig',
  };
}

function buildProvider() {
  const signingKid = signingKeys[0].kid;
  const provider = new Provider(issuer, {
    clients: clientMetadata,
    jwks: { keys: signingKeys },
    scopes: [SCOPE],
    cookies: { keys: cookieKeys },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => {
          if (oneOf) {
            return oneOf.includes(defaultAudience) ? defaultAudience : oneOf;
          }
          return defaultAudience;
        },
        getResourceServerInfo: async (ctx, resource) => {
          if (!audiences.includes(resource)) {
            throw new errors.InvalidTarget(`unknown resource indicator: ${resource}`);
          }
          return {
            scope: SCOPE,
            audience: resource,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256', kid: signingKid } },
          };
        },
        useGrantedResource: async () => true,
      },
    },
    ttl: {
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? ACCESS_TOKEN_TTL,
    },
    extraTokenClaims: async (ctx, token) => {
      const claims = claimsByClient.get(token.clientId);
      return claims ? structuredClone(claims) : undefined;
    },
  });
  provider.on('server_error', (ctx, error) => {
    console.error(`server_error on ${ctx.method} ${ctx.path}:`, error);
  });
  provider.on('grant.error', (ctx, error) => {
    const client = ctx.oidc?.client?.clientId ?? '-';
    console.error(`grant.error (client ${client}): ${error.error ?? error.name}: ${error.error_description ?? error.message}`);
  });
  provider.on('grant.success', (ctx) => {
    const client = ctx.oidc?.client?.clientId ?? '-';
    console.log(`issued a token to ${client} (kid ${signingKid})`);
  });
  return provider;
}

signingKeys.unshift(newSigningKey());
let handler = buildProvider().callback();

function isLoopback(address) {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

function keyState() {
  return { ok: true, kid: signingKeys[0].kid, kids: signingKeys.map(({ kid }) => kid) };
}

function handleTest(req, res, path) {
  if (!isLoopback(req.socket.remoteAddress)) {
    sendJson(res, 403, { error: 'test endpoints answer loopback callers only' });
    return;
  }
  if (path === '/test/health') {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJson(res, 405, { error: 'use GET' });
      return;
    }
    sendJson(res, 200, keyState());
    return;
  }
  if (path === '/test/rotate') {
    if (req.method !== 'POST') {
      sendJson(res, 405, { error: 'use POST' });
      return;
    }
    // Build the new instance completely before swapping, so that no request sees a half-made
    // one; a request already being handled finishes on the instance it started on.
    signingKeys.unshift(newSigningKey());
    try {
      handler = buildProvider().callback();
    } catch (error) {
      signingKeys.shift();
      console.error('rotation failed:', error);
      sendJson(res, 500, { error: `rotation failed: ${error.message}` });
      return;
    }
    console.log(`rotated the signing key: now ${signingKeys[0].kid}, publishing ${signingKeys.length} keys`);
    sendJson(res, 200, keyState());
    return;
  }
  sendJson(res, 404, { error: 'no such test endpoint' });
}

const server = http.createServer((req, res) => {
  const path = (req.url ?? '/').split('?', 1)[0];
  if (path === '/test' || path.startsWith('/test/')) {
    handleTest(req, res, path);
    return;
  }
  handler(req, res);
});

server.on('error', (error) => {
  fail(`cannot listen on ${HOST}:${port}: ${error.message}`);
});

server.listen(port, HOST, () => {
  console.log(`oidc-provider ready on ${issuer}`);
});

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: closing`);
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  // Requests in flight get a moment; keep-alive connections do not hold the exit.
  setTimeout(() => {
    server.closeAllConnections();
    process.exit(0);
  }, 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
