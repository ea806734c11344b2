// A real OpenID provider (the npm package `oidc-provider`) for the test suite:
// one issuer per process, issuing JWT access tokens by the client-credentials
// grant with resource indicators. Installed and started by scripts/with-db;
// tests start their own instances to rotate keys and take them down.
//
//   node provider.mjs PORT KEY_DIR CLIENT_ID:SECRET[,CLIENT_ID:SECRET...]
//
// The issuer is http://127.0.0.1:PORT. Signing keys (RSA for RS256, EC P-256
// for ES256) are generated at start; their private PEM and key ids are written
// to KEY_DIR (rs256.pem, rs256.kid, es256.pem, es256.kid) so that tests can
// forge tokens a real issuer would never send (expired, unknown kid) with the
// genuine key. Any resource is an audience; a resource whose URL contains
// "es256" gets ES256 tokens, every other RS256.
// Signals: SIGUSR2 rotates the RSA key (the old one stays published, as in a
// rotation); SIGUSR1 stops publishing every retired key.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, keyDir, clientList] = process.argv.slice(2);
if (!port || !keyDir || !clientList) {
  console.error('usage: node provider.mjs PORT KEY_DIR CLIENT_ID:SECRET[,...]');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const clients = clientList.split(',').map((pair) => {
  const [client_id, client_secret] = pair.split(':');
  return { client_id, client_secret, grant_types: ['client_credentials'], redirect_uris: [], response_types: [] };
});
fs.mkdirSync(keyDir, { recursive: true });

function newKey(kind) {
  const { privateKey } = kind === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  const alg = kind === 'rsa' ? 'RS256' : 'ES256';
  const kid = randomUUID();
  const file = kind === 'rsa' ? 'rs256' : 'es256';
  fs.writeFileSync(path.join(keyDir, `${file}.pem`), privateKey.export({ format: 'pem', type: 'pkcs8' }));
  fs.writeFileSync(path.join(keyDir, `${file}.kid`), kid);
  return { ...jwk, kid, alg, use: 'sig' };
}

let rsa = [newKey('rsa')]; // newest first: the first key of an alg signs
const ec = newKey('ec');

function build() {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [...rsa, ec] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => ({
          scope: 'api',
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: resource.includes('es256') ? 'ES256' : 'RS256' } },
        }),
      },
    },
    scopes: ['api'],
    enabledJWA: { requestObjectSigningAlgValues: ['RS256', 'ES256'] },
  });
  provider.proxy = false;
  return provider.callback();
}

let handler = build();
const server = http.createServer((req, res) => handler(req, res));
server.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
process.on('SIGUSR2', () => {
  rsa = [newKey('rsa'), ...rsa];
  handler = build();
  console.log(`rotated ${rsa[0].kid}`);
});
process.on('SIGUSR1', () => {
  rsa = [rsa[0]];
  handler = build();
  console.log('retired keys unpublished');
});
process.on('SIGTERM', () => process.exit(0));
