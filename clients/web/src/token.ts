/**
 * Reading (never verifying) a session token's claims: the persister needs
 * the Clerk user id (`sub`) to address the user and the expiry (`exp`) to
 * reconnect its stream with a fresh token. user-service verifies the token.
 *
 * @module
 */

/** The claims the persister reads. */
export interface SessionClaims {
  /** The Clerk user id. */
  sub: string;
  /** Expiry, seconds since the epoch, when the token has one. */
  exp?: number;
}

function base64UrlDecode(part: string): string {
  const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * Returns the `sub` and `exp` claims of a JWT without checking its signature.
 * Throws when the token is not a JWT with a string `sub`.
 */
export function readSessionClaims(token: string): SessionClaims {
  const parts = token.split(".");
  if (parts.length !== 3 || !parts[1]) {
    throw new Error("session token is not a JWT (expected three dot-separated parts)");
  }
  let payload: unknown;
  try {
    payload = JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    throw new Error("session token payload is not base64url-encoded JSON");
  }
  if (typeof payload !== "object" || payload === null) {
    throw new Error("session token payload is not a JSON object");
  }
  const { sub, exp } = payload as { sub?: unknown; exp?: unknown };
  if (typeof sub !== "string" || sub === "") {
    throw new Error("session token has no `sub` claim (the Clerk user id)");
  }
  return typeof exp === "number" ? { sub, exp } : { sub };
}
