// A real OpenID Connect provider (panva/oidc-provider, OpenID Certified) on loopback, for
// datagate's identity tests (tests/identity.rs). Started by the tests:
//
//   node provider.mjs --port 0 --state DIR --redirect-uri http://127.0.0.1:P/oauth2/callback
//                     [--tls-cert CERT.pem --tls-key KEY.pem]   (serve https instead)
//
// It prints `listening on http://127.0.0.1:PORT` (or https://) once it serves. Signing keys live in
// DIR/keys.json (generated per kid on first use, kept across restarts, so a restarted
// provider signs with the same keys). Test-only control endpoints, beside the provider:
//
//   GET  /__test/jwks_hits          how many times the JWKS was fetched
//   POST /__test/keys {"kids":[..]} publish exactly these keys; the first one signs
//   POST /__test/cache_control {"value": "max-age=1"}   Cache-Control on the JWKS
//   POST /__test/login {"account": "alice", "roles": [..]}   who the next login is
//
// Logins complete without a form (the account set above), and consent is granted for
// the datagate client, so a headless browser follows redirects end to end.

import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import path from 'node:path';
import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, value, index, all) => {
    if (value.startsWith('--')) pairs.push([value.slice(2), all[index + 1]]);
    return pairs;
  }, []),
);
const stateDir = args.state;
const keysFile = path.join(stateDir, 'keys.json');
const redirectUris = (args['redirect-uri'] || 'http://127.0.0.1:1/oauth2/callback').split(',');
const clientSecret = args['client-secret'] || 'datagate-test-client-secret-0123456789';

let saved = fs.existsSync(keysFile)
  ? JSON.parse(fs.readFileSync(keysFile, 'utf8'))
  : { published: ['key-1'], keys: {} };
let jwksHits = 0;
let cacheControl = null;
let nextLogin = { account: 'alice', roles: ['Gamma'] };

async function keyFor(kid) {
  if (!saved.keys[kid]) {
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    saved.keys[kid] = { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
  }
  return saved.keys[kid];
}

async function buildProvider(issuer) {
  const keys = [];
  for (const kid of saved.published) keys.push(await keyFor(kid));
  fs.writeFileSync(keysFile, JSON.stringify(saved));
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'datagate',
        client_secret: clientSecret,
        redirect_uris: redirectUris,
        post_logout_redirect_uris: redirectUris.map((uri) => new URL('/', uri).href),
        grant_types: ['authorization_code', 'client_credentials'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'RS256',
      },
    ],
    jwks: { keys },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:datagate',
        getResourceServerInfo: () => ({
          scope: 'api',
          audience: 'urn:datagate',
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'roles'],
      email: ['email'],
    },
    conformIdTokenClaims: false,
    findAccount: (_ctx, sub) => ({
      accountId: sub,
      claims: () => ({
        sub,
        preferred_username: sub,
        email: `${sub}@example.test`,
        roles: saved.roles?.[sub] ?? [],
      }),
    }),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['oidc-compat-cookie-key-not-secret'] },
    ttl: { AccessToken: 600, ClientCredentials: 600, IdToken: 600 },
  });
  provider.proxy = false;
  return provider;
}

async function readJson(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return body ? JSON.parse(body) : {};
}

let provider;
let handler;

const scheme = args['tls-cert'] ? 'https' : 'http';
const serve = async (req, res) => {
  try {
    const url = new URL(req.url, 'http://local');
    if (url.pathname === '/__test/jwks_hits') {
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify({ hits: jwksHits }));
    }
    if (url.pathname === '/__test/keys' && req.method === 'POST') {
      saved.published = (await readJson(req)).kids;
      provider = await buildProvider(provider.issuer);
      handler = provider.callback();
      return res.end('{}');
    }
    if (url.pathname === '/__test/cache_control' && req.method === 'POST') {
      cacheControl = (await readJson(req)).value;
      return res.end('{}');
    }
    if (url.pathname === '/__test/login' && req.method === 'POST') {
      nextLogin = await readJson(req);
      saved.roles = { ...(saved.roles || {}), [nextLogin.account]: nextLogin.roles || [] };
      return res.end('{}');
    }
    if (url.pathname.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'login') {
        return await provider.interactionFinished(
          req,
          res,
          { login: { accountId: nextLogin.account } },
          { mergeWithLastSubmission: false },
        );
      }
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      if (details.prompt.details.missingOIDCScope) {
        grant.addOIDCScope(details.prompt.details.missingOIDCScope.join(' '));
      }
      if (details.prompt.details.missingOIDCClaims) {
        grant.addOIDCClaims(details.prompt.details.missingOIDCClaims);
      }
      const grantId = await grant.save();
      return await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    if (url.pathname === '/jwks') {
      jwksHits += 1;
      if (cacheControl) {
        const writeHead = res.writeHead.bind(res);
        res.writeHead = (status, ...rest) => {
          res.setHeader('cache-control', cacheControl);
          return writeHead(status, ...rest);
        };
      }
    }
    return await handler(req, res);
  } catch (error) {
    res.statusCode = 500;
    res.end(String(error));
  }
};
const server = scheme === 'https'
  ? https.createServer(
    { cert: fs.readFileSync(args['tls-cert']), key: fs.readFileSync(args['tls-key']) },
    serve,
  )
  : http.createServer(serve);

process.on('unhandledRejection', (error) => console.error('unhandled', error));
// The tests read stdout only up to the `listening on` line, then close the pipe; the
// provider's later notices must not kill it with EPIPE.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});

server.listen(Number(args.port || 0), '127.0.0.1', async () => {
  const { port } = server.address();
  provider = await buildProvider(`${scheme}://127.0.0.1:${port}`);
  handler = provider.callback();
  console.log(`listening on ${scheme}://127.0.0.1:${port}`);
});
