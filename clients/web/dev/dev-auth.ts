/**
 * DEVELOPMENT ONLY. A local stand-in for Clerk's session tokens: an RSA key
 * pair made on this machine, and RS256 JWTs signed with it that carry the
 * claims Clerk puts in a session token (`sub`, `sid`, `iss`, `azp`, `iat`,
 * `nbf`, `exp`). user-service trusts them only because it is started with the
 * public key as `CLERK_JWT_KEY`; never give a production user-service this key.
 *
 * @module
 */
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SignJWT, importPKCS8 } from "jose";

/** The issuer dev tokens carry (and user-service is told to expect). */
export const DEV_ISSUER = "https://clerk.dev-only.invalid";

/** A development key pair as PEM. */
export interface DevKeys {
  /** PKCS#8 private key: mints tokens. Stays on this machine. */
  privateKeyPem: string;
  /** SPKI public key: user-service's `CLERK_JWT_KEY`. */
  publicKeyPem: string;
}

/** Makes a fresh 2048-bit RSA key pair. */
export function generateDevKeys(): DevKeys {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
    publicKeyEncoding: { type: "spki", format: "pem" },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/** Reads the key pair kept in `dir`, making it (mode 0600) the first time. */
export function loadOrCreateDevKeys(dir: string): DevKeys {
  const privatePath = join(dir, "dev-jwt-private.pem");
  const publicPath = join(dir, "dev-jwt-public.pem");
  if (!existsSync(privatePath) || !existsSync(publicPath)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const keys = generateDevKeys();
    writeFileSync(privatePath, keys.privateKeyPem, { mode: 0o600 });
    writeFileSync(publicPath, keys.publicKeyPem, { mode: 0o644 });
  }
  return { privateKeyPem: readFileSync(privatePath, "utf8"), publicKeyPem: readFileSync(publicPath, "utf8") };
}

/** What a minted token says. */
export interface MintOptions {
  /** The Clerk user id (`sub`). */
  sub: string;
  /** `iss`; default {@link DEV_ISSUER}. */
  issuer?: string;
  /** `azp`, the origin that asked for the token; omitted when unset. */
  authorizedParty?: string;
  /** Lifetime in seconds; default 60, like Clerk's. */
  ttlSeconds?: number;
  /** `kid` header; default `dev`. */
  keyId?: string;
}

/** Mints a session token signed with the development private key. */
export async function mintSessionToken(privateKeyPem: string, options: MintOptions): Promise<string> {
  const key = await importPKCS8(privateKeyPem, "RS256");
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({ sid: `sess_dev_${randomUUID().replace(/-/g, "")}`, ...(options.authorizedParty ? { azp: options.authorizedParty } : {}) })
    .setProtectedHeader({ alg: "RS256", typ: "JWT", kid: options.keyId ?? "dev" })
    .setSubject(options.sub)
    .setIssuer(options.issuer ?? DEV_ISSUER)
    .setIssuedAt(now)
    .setNotBefore(now - 5)
    .setExpirationTime(now + (options.ttlSeconds ?? 60));
  return jwt.sign(key);
}
