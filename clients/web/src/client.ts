/**
 * Typed clients for user-service over gRPC-Web (browsers and Node 20), with
 * the caller's bearer token added to every call.
 *
 * @module
 */
import { type Client, type Interceptor, type Transport, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ChangeService } from "./gen/userdata/v1/change_service_pb.js";
import { UserDataService } from "./gen/userdata/v1/user_data_service_pb.js";
import { UserService } from "./gen/userdata/v1/user_service_pb.js";

/** Returns the current session token, or null when nobody is signed in (Clerk's `getToken()`). */
export type GetToken = () => Promise<string | null | undefined>;

/** How to reach user-service. */
export interface ClientOptions {
  /** user-service's address, e.g. `https://users.example.com` or `http://127.0.0.1:50051`. */
  baseUrl: string;
  /** Called before every call; its token goes in `authorization: Bearer …`. */
  getToken: GetToken;
  /** A fetch to use instead of the global one (tests, credentials). */
  fetch?: typeof globalThis.fetch;
}

/** The three services of `userdata.v1`, typed from the proto contract. */
export interface UserDataClients {
  /** `userdata.v1.UserService`. */
  users: Client<typeof UserService>;
  /** `userdata.v1.UserDataService`. */
  data: Client<typeof UserDataService>;
  /** `userdata.v1.ChangeService`. */
  changes: Client<typeof ChangeService>;
  /** The transport they share. */
  transport: Transport;
}

/** Raised before a call when `getToken()` has no token to give. */
export class SignedOutError extends Error {
  constructor() {
    super("no session token: getToken() returned none (signed out?)");
    this.name = "SignedOutError";
  }
}

function bearer(getToken: GetToken): Interceptor {
  return (next) => async (req) => {
    // A call that brings its own token (the change stream, which reopens
    // before that token expires) keeps it.
    if (!req.header.has("authorization")) {
      const token = await getToken();
      if (!token) throw new SignedOutError();
      req.header.set("authorization", `Bearer ${token}`);
    }
    return next(req);
  };
}

/** Creates typed clients for user-service over the gRPC-Web protocol. */
export function createUserDataClients(options: ClientOptions): UserDataClients {
  const transport = createGrpcWebTransport({
    baseUrl: options.baseUrl,
    // Binary gRPC-Web: what tonic-web serves, and smaller than JSON.
    useBinaryFormat: true,
    interceptors: [bearer(options.getToken)],
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  return {
    users: createClient(UserService, transport),
    data: createClient(UserDataService, transport),
    changes: createClient(ChangeService, transport),
    transport,
  };
}
