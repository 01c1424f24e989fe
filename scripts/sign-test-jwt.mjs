#!/usr/bin/env node
// Prints the launch checklist's user test token (freeside-launch-gate.md §3) to stdout, without a newline.
//   node scripts/sign-test-jwt.mjs <pkcs8-p256.pem>
// Header {"alg":"ES256","typ":"JWT"} (no kid); iss/aud "arrakis"; 5-minute lifetime; random jti; no sub or nbf.
// Exit 2 without an argument, 1 on any signing error. Node's built-in crypto only. `loa gate` mints the same token
// in-process; this script is for curl and other clients.
import { createPrivateKey, randomUUID, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';

const path = process.argv[2];
if (path === '--help' || path === '-h') {
  process.stdout.write('Usage: node scripts/sign-test-jwt.mjs <pkcs8-p256.pem>\n' +
    'Prints a signed ES256 user test token (iss/aud arrakis, 5 minutes, no kid) to stdout. Exit 2 without a PEM, 1 on a signing error.\n');
  process.exit(0);
}
if (!path) {
  process.stderr.write('Usage: node scripts/sign-test-jwt.mjs <pkcs8-p256.pem>\n');
  process.exit(2);
}

try {
  const pem = readFileSync(path, 'utf8');
  if (!pem.includes('-----BEGIN PRIVATE KEY-----')) {
    throw new Error('expected a PKCS#8 PEM ("BEGIN PRIVATE KEY"); convert with: openssl pkcs8 -topk8 -nocrypt -in key.pem');
  }
  const key = createPrivateKey({ key: pem, format: 'pem' });
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new Error('ES256 needs a P-256 (prime256v1) EC key');
  }
  const b64url = (value) => Buffer.from(value).toString('base64url');
  const iat = Math.floor(Date.now() / 1000);
  const header = { alg: 'ES256', typ: 'JWT' };
  const claims = {
    v: 1,
    tenant_id: 'test-tenant',
    access_level: 'free',
    pool_id: 'cheap',
    allowed_pools: ['cheap'],
    platform: 'test',
    channel_id: 'test-channel',
    pool_mapping_version: '1.0.0',
    iss: 'arrakis',
    aud: 'arrakis',
    iat,
    exp: iat + 300,
    jti: randomUUID(),
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  process.stdout.write(`${input}.${signature.toString('base64url')}`);
} catch (err) {
  process.stderr.write(`JWT signing failed: ${err.message}\n`);
  process.exit(1);
}
