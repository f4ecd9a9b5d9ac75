/**
 * Errors the persister hands to the application.
 *
 * @module
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** One field the server (or the persister) refused, from `google.rpc.BadRequest`. */
export interface FieldViolation {
  /** The field's path as the server names it, e.g. `preferences.timezone`. */
  field: string;
  /** Why it was refused. */
  description: string;
}

/**
 * A local edit that was not written: the store has been put back to the
 * server's value, and this says why.
 */
export class UserDataWriteError extends Error {
  /** The gRPC status code (`Code.InvalidArgument`, `Code.FailedPrecondition`, `Code.PermissionDenied`, …). */
  readonly code: Code;
  /** What the edit was for: `preferences`, `onboarding_status`, `feature_flags`, `custom.<name>`, or `user` (the profile). */
  readonly key: string;
  /** The server's field violations (empty when the refusal was not about fields). */
  readonly fieldViolations: FieldViolation[];
  /** `ErrorInfo.reason` when the server sent one, e.g. `INVALID_ARGUMENT`. */
  readonly reason: string | undefined;
  /** The store ids that were rolled back, as `values/<id>` or `<table>/<row>/<cell>`. */
  readonly rolledBack: string[];

  /** Makes an error for a refused write of `key`. */
  constructor(init: {
    code: Code;
    key: string;
    message: string;
    fieldViolations?: FieldViolation[];
    reason?: string | undefined;
    rolledBack?: string[];
    cause?: unknown;
  }) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "UserDataWriteError";
    this.code = init.code;
    this.key = init.key;
    this.fieldViolations = init.fieldViolations ?? [];
    this.reason = init.reason;
    this.rolledBack = init.rolledBack ?? [];
  }

  /** Builds the error from a failed call, reading `grpc-status-details-bin`. */
  static fromCall(key: string, error: unknown, rolledBack: string[]): UserDataWriteError {
    const connectError = ConnectError.from(error);
    const fieldViolations: FieldViolation[] = [];
    for (const badRequest of connectError.findDetails(BadRequestSchema)) {
      for (const v of badRequest.fieldViolations) {
        fieldViolations.push({ field: v.field, description: v.description });
      }
    }
    const reason = connectError.findDetails(ErrorInfoSchema)[0]?.reason;
    return new UserDataWriteError({
      code: connectError.code,
      key,
      message: connectError.rawMessage,
      fieldViolations,
      reason,
      rolledBack,
      cause: connectError,
    });
  }
}

/** True when `error` is a call that failed with `code`. */
export function hasCode(error: unknown, code: Code): boolean {
  return error instanceof ConnectError && error.code === code;
}

export { Code };
