/**
 * `@userdata/web`: a TinyBase store that holds the signed-in user's data on
 * user-service and stays current by itself.
 *
 * @module
 */
export {
  type ConnectionStatus,
  type UserDataPersister,
  type UserDataPersisterOptions,
  createUserDataPersister,
} from "./persister.js";
export { type ClientOptions, type GetToken, type UserDataClients, SignedOutError, createUserDataClients } from "./client.js";
export { Code, type FieldViolation, UserDataWriteError } from "./errors.js";
export {
  CUSTOM_CELL,
  CUSTOM_TABLE,
  FLAG_CELL,
  FLAGS_TABLE,
  ONBOARDING_STEPS,
  ONBOARDING_VALUES,
  PREFERENCE_VALUES,
  type StepName,
  type ThemeName,
} from "./layout.js";
export { type BrowserCacheKind, startBrowserCache } from "./cache.js";
export { readSessionClaims, type SessionClaims } from "./token.js";
