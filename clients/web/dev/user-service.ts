/**
 * DEVELOPMENT AND TESTS ONLY. Starts the cargo-built user-service on SQLite
 * with the development JWT key, CORS for local pages, and a service token
 * file, and gives typed native-gRPC clients that use the service token.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ChangeService } from "../src/gen/userdata/v1/change_service_pb.js";
import { UserDataService } from "../src/gen/userdata/v1/user_data_service_pb.js";
import { UserService } from "../src/gen/userdata/v1/user_service_pb.js";
import { DEV_ISSUER } from "./dev-auth.js";

/** The repository's root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The user-service binary: `USER_SERVICE_BIN`, else the debug build in the cargo target dir. */
export function userServiceBin(): string {
  const explicit = process.env["USER_SERVICE_BIN"];
  const bin = explicit ?? join(process.env["CARGO_TARGET_DIR"] ?? join(REPO_ROOT, "target"), "debug", "user-service");
  if (!existsSync(bin)) {
    throw new Error(`user-service binary not found at ${bin}: run \`cargo build -p user-service\` or set USER_SERVICE_BIN`);
  }
  return bin;
}

/** How to start it. */
export interface DevUserServiceOptions {
  /** Directory for the SQLite file and the tokens file. */
  dataDir: string;
  /** The development public key (`CLERK_JWT_KEY`). */
  publicKeyPem: string;
  /** Origins the browser may call from (`USER_SERVICE_CORS_ORIGINS`). */
  corsOrigins?: string[];
  /** `CLERK_AUTHORIZED_PARTIES`; none by default. */
  authorizedParties?: string[];
  /** Port; 0 (the default) picks a free one. A restart keeps the port. */
  port?: number;
  /** Extra arguments. */
  args?: string[];
  /** Print the service's logs. */
  verbose?: boolean;
}

/** Native gRPC clients authenticated with the service token (scopes read, write, admin, audit). */
export interface ServiceClients {
  users: Client<typeof UserService>;
  data: Client<typeof UserDataService>;
  changes: Client<typeof ChangeService>;
}

/** A running user-service. */
export class DevUserService {
  /** `http://127.0.0.1:<port>`. */
  url = "";
  /** The service token (all scopes), for grpcurl and {@link clients}. */
  readonly serviceToken: string;
  /** The tokens file. */
  readonly tokensFile: string;
  private child: ChildProcess | undefined;
  private port: number;

  private constructor(readonly options: DevUserServiceOptions) {
    mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
    this.serviceToken = `dev-${randomBytes(24).toString("hex")}`;
    this.tokensFile = join(options.dataDir, "tokens");
    writeFileSync(this.tokensFile, `# development only\ndev-admin read,write,admin,audit ${this.serviceToken}\n`, { mode: 0o600 });
    this.port = options.port ?? 0;
  }

  /** Starts it and waits until it listens. */
  static async start(options: DevUserServiceOptions): Promise<DevUserService> {
    const service = new DevUserService(options);
    await service.launch();
    return service;
  }

  /** The environment and flags it runs with. */
  private command(): { args: string[]; env: NodeJS.ProcessEnv } {
    const o = this.options;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CLERK_JWT_KEY: o.publicKeyPem,
      CLERK_ISSUER: DEV_ISSUER,
      RUST_LOG: process.env["RUST_LOG"] ?? "info",
    };
    delete env["USER_SERVICE_CORS_ORIGINS"];
    if (o.corsOrigins && o.corsOrigins.length > 0) env["USER_SERVICE_CORS_ORIGINS"] = o.corsOrigins.join(",");
    if (o.authorizedParties) env["CLERK_AUTHORIZED_PARTIES"] = o.authorizedParties.join(",");
    delete env["DATABASE_URL"];
    const args = [
      "--listen",
      `127.0.0.1:${this.port}`,
      "--database-url",
      `sqlite://${join(o.dataDir, "userdata.db")}`,
      "--auth-tokens",
      this.tokensFile,
      "--metrics-listen",
      "off",
      "--log-format",
      "json",
      ...(o.args ?? []),
    ];
    return { args, env };
  }

  private launch(): Promise<void> {
    const { args, env } = this.command();
    const child = spawn(userServiceBin(), args, { env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    return new Promise<void>((resolvePromise, reject) => {
      let output = "";
      const onLine = (chunk: Buffer) => {
        const text = chunk.toString();
        if (this.options.verbose) process.stderr.write(text);
        output += text;
        for (const line of text.split("\n")) {
          if (!line.includes("user-service listening")) continue;
          try {
            // JSON logs carry the event's fields at the top level.
            const addr = (JSON.parse(line) as { addr?: string }).addr;
            if (addr) {
              this.port = Number(addr.slice(addr.lastIndexOf(":") + 1));
              this.url = `http://127.0.0.1:${this.port}`;
              resolvePromise();
            }
          } catch {
            // Not a JSON line.
          }
        }
      };
      child.stdout?.on("data", onLine);
      child.stderr?.on("data", onLine);
      child.once("exit", (code, signal) => reject(new Error(`user-service exited (${code ?? signal}) before listening:\n${output}`)));
    });
  }

  /** Stops it with SIGKILL (no graceful shutdown) and waits for the exit. */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((done) => {
      child.once("exit", () => done());
      child.kill("SIGKILL");
    });
  }

  /** Kills it and starts it again on the same port and database. */
  async restart(): Promise<void> {
    await this.kill();
    await this.launch();
  }

  /** Stops it. */
  async stop(): Promise<void> {
    await this.kill();
  }

  /** Native gRPC clients with the service token. */
  clients(): ServiceClients {
    const transport = createGrpcTransport({
      baseUrl: this.url,
      interceptors: [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${this.serviceToken}`);
          return next(req);
        },
      ],
    });
    return {
      users: createClient(UserService, transport),
      data: createClient(UserDataService, transport),
      changes: createClient(ChangeService, transport),
    };
  }
}
