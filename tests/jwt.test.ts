/**
 * scripts/lib/jwt.ts, the one token minter of tests and scripts: jose's honest tokens and the
 * raw pieces the forgery tests use agree with each other and with the functions' verifier; key
 * pairs publish only their public half.
 */
import assert from "node:assert/strict";
import { createTokenVerifier } from "../supabase/functions/_shared/auth.ts";
import {
  base64UrlDecode,
  base64UrlEncode,
  generateKeyPair,
  jsonSegment,
  jwks,
  LOCAL_JWT_SECRET,
  signature,
  signJwt,
  unsignedJwt,
  userClaims,
  userToken,
  verifyJwt,
} from "../scripts/lib/jwt.ts";

function decodeJson(segment: string): unknown {
  return JSON.parse(new TextDecoder().decode(base64UrlDecode(segment)));
}

Deno.test("base64url round-trips every byte and UTF-8 text, without padding", () => {
  const every = Uint8Array.from({ length: 256 }, (_, i) => i);
  const text = base64UrlEncode(every);
  assert.match(text, /^[A-Za-z0-9_-]+$/);
  assert.deepEqual(base64UrlDecode(text), every);
  assert.equal(new TextDecoder().decode(base64UrlDecode(base64UrlEncode("é ✓ 🎟"))), "é ✓ 🎟");
  assert.equal(base64UrlEncode("?>?"), "Pz4_");
  assert.throws(() => base64UrlDecode("a"));
});

Deno.test("an HS256 token from jose carries the raw signature of its header and payload", async () => {
  const token = await userToken(crypto.randomUUID(), { email: "a@example.com" });
  const [head, payload, sig] = token.split(".");
  assert.deepEqual(decodeJson(head!), { alg: "HS256", typ: "JWT" });
  assert.equal(await signature(`${head}.${payload}`, LOCAL_JWT_SECRET), sig);
  const claims = await createTokenVerifier({ jwtSecret: LOCAL_JWT_SECRET })(`Bearer ${token}`);
  assert.equal(claims.email, "a@example.com");
  assert.deepEqual(await verifyJwt(token, LOCAL_JWT_SECRET), decodeJson(payload!));
  assert.equal(await verifyJwt(token, `${LOCAL_JWT_SECRET}x`), null);
  assert.equal(
    await verifyJwt(unsignedJwt(userClaims(crypto.randomUUID())), LOCAL_JWT_SECRET),
    null,
  );
  const expired = await userToken(crypto.randomUUID(), {}, { ttlSeconds: -1 });
  assert.equal(await verifyJwt(expired, LOCAL_JWT_SECRET), null);
});

Deno.test("ES256 and RS256 tokens, from jose or assembled raw, verify against the published JWKS", async () => {
  const [es, rs] = await Promise.all([generateKeyPair("ES256"), generateKeyPair("RS256")]);
  const published = await jwks([es, rs]);
  const verify = createTokenVerifier({ fetchJwks: () => Promise.resolve(published) });
  for (const pair of [es, rs]) {
    const sub = crypto.randomUUID();
    const token = await signJwt(userClaims(sub), pair);
    assert.deepEqual(decodeJson(token.split(".")[0]!), {
      alg: pair.alg,
      typ: "JWT",
      kid: pair.kid,
    });
    assert.equal((await verify(`Bearer ${token}`)).sub, sub, `${pair.alg} from jose`);
    const input = `${jsonSegment({ alg: pair.alg, kid: pair.kid })}.${
      jsonSegment(userClaims(sub))
    }`;
    const raw = `${input}.${await signature(input, pair)}`;
    assert.equal((await verify(`Bearer ${raw}`)).sub, sub, `${pair.alg} assembled raw`);
  }
});

Deno.test("a key pair is published under its thumbprint or a given kid, without its private half", async () => {
  const es = await generateKeyPair("ES256");
  const rs = await generateKeyPair("RS256", { kid: "rs-1", extractable: true });
  assert.match(es.kid, /^[A-Za-z0-9_-]{43}$/, "an RFC 7638 SHA-256 thumbprint");
  assert.notEqual((await generateKeyPair("ES256")).kid, es.kid);
  assert.equal(es.privateKey.extractable, false);
  assert.equal(rs.privateKey.extractable, true);
  const { keys } = await jwks([es, rs]);
  assert.deepEqual(keys.map((k) => [k.kid, k.alg, k.use, k.kty]), [
    [es.kid, "ES256", "sig", "EC"],
    ["rs-1", "RS256", "sig", "RSA"],
  ]);
  for (const key of keys) {
    for (const secret of ["d", "p", "q", "dp", "dq", "qi"]) {
      assert.ok(!(secret in key), `${key.alg} JWK carries ${secret}`);
    }
  }
});
