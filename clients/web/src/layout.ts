/**
 * The store layout: which TinyBase values and tables hold which user data,
 * and the conversions from the server's two shapes (typed RPC messages and
 * the stored JSON the change stream carries) into one store form.
 *
 * | Store id                         | Type                                   | Server key          | Writable through          |
 * |----------------------------------|----------------------------------------|---------------------|---------------------------|
 * | value `theme`                    | `'light' \| 'dark' \| 'system'`        | `preferences`       | `UpdatePreferences`       |
 * | value `notifications`            | boolean                                | `preferences`       | `UpdatePreferences`       |
 * | value `language`                 | BCP-47 tag                             | `preferences`       | `UpdatePreferences`       |
 * | value `timezone`                 | IANA zone                              | `preferences`       | `UpdatePreferences`       |
 * | value `onboardingStep`           | `'welcome' \| 'profile' \| 'preferences' \| 'complete'` | `onboarding_status` | `AdvanceOnboarding` (forward only) |
 * | value `onboardingCompleted`      | boolean                                | `onboarding_status` | read-only                 |
 * | value `onboardingStartedAt`      | ISO-8601, absent before the first step | `onboarding_status` | read-only                 |
 * | value `onboardingCompletedAt`    | ISO-8601, absent until complete        | `onboarding_status` | read-only                 |
 * | values `email`, `firstName`, `lastName`, `username`, `imageUrl` | string, absent when unset | the user record (Clerk) | read-only |
 * | table `flags`, row = flag key, cell `enabled` | boolean                   | `feature_flags`     | `UpdateFeatureFlags` (the server decides who may) |
 * | table `custom`, row = name after `custom.`, cell `value` | any JSON       | `custom.<name>`     | `SetUserData`, `DeleteUserData` |
 *
 * Any other value or table is the application's own and never sent.
 *
 * @module
 */
import { type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  OnboardingStep,
  Theme,
  type OnboardingStatus,
  type Preferences,
} from "./gen/userdata/v1/user_data_pb.js";
import type { User } from "./gen/userdata/v1/user_pb.js";

/** Store ids of the preference values. */
export const PREFERENCE_VALUES = ["theme", "notifications", "language", "timezone"] as const;
/** A preference value id. */
export type PreferenceId = (typeof PREFERENCE_VALUES)[number];
/** Store ids of the onboarding values. */
export const ONBOARDING_VALUES = [
  "onboardingStep",
  "onboardingCompleted",
  "onboardingStartedAt",
  "onboardingCompletedAt",
] as const;
/** An onboarding value id. */
export type OnboardingId = (typeof ONBOARDING_VALUES)[number];
/** Store ids of the user record's profile values (read-only: Clerk owns them). */
export const PROFILE_VALUES = ["email", "firstName", "lastName", "username", "imageUrl"] as const;
/** A profile value id. */
export type ProfileId = (typeof PROFILE_VALUES)[number];
/** The profile in store form; unset fields are `undefined`. */
export type ProfileState = Record<ProfileId, string | undefined>;
/** A user with no profile fields. */
export const NO_PROFILE: ProfileState = {
  email: undefined,
  firstName: undefined,
  lastName: undefined,
  username: undefined,
  imageUrl: undefined,
};

/** The profile from a typed `User`. */
export function profileFromProto(user: User | undefined): ProfileState {
  return {
    email: user?.email,
    firstName: user?.firstName,
    lastName: user?.lastName,
    username: user?.username,
    imageUrl: user?.imageUrl,
  };
}

/** The profile from a user change's JSON (`{email, first_name, …}`). */
export function profileFromJson(value: JsonValue | undefined): ProfileState {
  if (!isObject(value)) return { ...NO_PROFILE };
  const text = (key: string) => (typeof value[key] === "string" ? (value[key] as string) : undefined);
  return {
    email: text("email"),
    firstName: text("first_name"),
    lastName: text("last_name"),
    username: text("username"),
    imageUrl: text("image_url"),
  };
}

/** The table of feature flags (row id = flag key, cell `enabled`). */
export const FLAGS_TABLE = "flags";
/** The cell of a flag row. */
export const FLAG_CELL = "enabled";
/** The table of `custom.*` values (row id = name after `custom.`, cell `value`). */
export const CUSTOM_TABLE = "custom";
/** The cell of a custom row. */
export const CUSTOM_CELL = "value";
/** Server key of the preferences. */
export const PREFERENCES_KEY = "preferences";
/** Server key of the onboarding status. */
export const ONBOARDING_KEY = "onboarding_status";
/** Server key of the feature flags. */
export const FLAGS_KEY = "feature_flags";
/** Prefix of custom keys on the server. */
export const CUSTOM_PREFIX = "custom.";

/** Theme names in the store. */
export type ThemeName = "light" | "dark" | "system";
/** Onboarding step names in the store, in their only order. */
export const ONBOARDING_STEPS = ["welcome", "profile", "preferences", "complete"] as const;
/** An onboarding step name. */
export type StepName = (typeof ONBOARDING_STEPS)[number];

/** Preferences in store form. */
export interface PreferencesState {
  theme: ThemeName;
  notifications: boolean;
  language: string;
  timezone: string;
}

/** Onboarding in store form; absent times are `undefined`. */
export interface OnboardingState {
  onboardingStep: StepName;
  onboardingCompleted: boolean;
  onboardingStartedAt: string | undefined;
  onboardingCompletedAt: string | undefined;
}

/** The documented defaults (the server's, for a user with nothing stored). */
export const DEFAULT_PREFERENCES: PreferencesState = {
  theme: "system",
  notifications: true,
  language: "en",
  timezone: "UTC",
};

/** Onboarding before the first step. */
export const NOT_STARTED: OnboardingState = {
  onboardingStep: "welcome",
  onboardingCompleted: false,
  onboardingStartedAt: undefined,
  onboardingCompletedAt: undefined,
};

const THEME_NAMES: Record<Theme, ThemeName | undefined> = {
  [Theme.UNSPECIFIED]: undefined,
  [Theme.LIGHT]: "light",
  [Theme.DARK]: "dark",
  [Theme.SYSTEM]: "system",
};

const STEP_NAMES: Record<OnboardingStep, StepName | undefined> = {
  [OnboardingStep.UNSPECIFIED]: undefined,
  [OnboardingStep.WELCOME]: "welcome",
  [OnboardingStep.PROFILE]: "profile",
  [OnboardingStep.PREFERENCES]: "preferences",
  [OnboardingStep.COMPLETE]: "complete",
};

/** The proto enum for a theme name; undefined when the name is not one. */
export function themeToProto(name: unknown): Theme | undefined {
  switch (name) {
    case "light":
      return Theme.LIGHT;
    case "dark":
      return Theme.DARK;
    case "system":
      return Theme.SYSTEM;
    default:
      return undefined;
  }
}

/** The proto enum for a step name; undefined when the name is not one. */
export function stepToProto(name: unknown): OnboardingStep | undefined {
  const index = ONBOARDING_STEPS.indexOf(name as StepName);
  return index < 0 ? undefined : ((index + 1) as OnboardingStep);
}

function iso(time: Timestamp | undefined): string | undefined {
  return time ? timestampDate(time).toISOString() : undefined;
}

/** Normalises a stored ISO-8601 time to the form `Date.toISOString` gives. */
function isoFromJson(value: JsonValue | undefined): string | undefined {
  if (typeof value !== "string") return undefined;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toISOString();
}

/** Preferences from a typed response. */
export function preferencesFromProto(p: Preferences | undefined): PreferencesState {
  if (!p) return { ...DEFAULT_PREFERENCES };
  return {
    theme: THEME_NAMES[p.theme] ?? DEFAULT_PREFERENCES.theme,
    notifications: p.notifications,
    language: p.language || DEFAULT_PREFERENCES.language,
    timezone: p.timezone || DEFAULT_PREFERENCES.timezone,
  };
}

function isObject(value: JsonValue | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Preferences from the stored JSON (a change's `after`); absent means defaults. */
export function preferencesFromJson(value: JsonValue | undefined): PreferencesState {
  if (!isObject(value)) return { ...DEFAULT_PREFERENCES };
  const theme = value["theme"];
  return {
    theme: theme === "light" || theme === "dark" || theme === "system" ? theme : DEFAULT_PREFERENCES.theme,
    notifications: typeof value["notifications"] === "boolean" ? value["notifications"] : DEFAULT_PREFERENCES.notifications,
    language: typeof value["language"] === "string" ? value["language"] : DEFAULT_PREFERENCES.language,
    timezone: typeof value["timezone"] === "string" ? value["timezone"] : DEFAULT_PREFERENCES.timezone,
  };
}

/** Onboarding from a typed response. */
export function onboardingFromProto(s: OnboardingStatus | undefined): OnboardingState {
  if (!s) return { ...NOT_STARTED };
  return {
    onboardingStep: STEP_NAMES[s.step] ?? "welcome",
    onboardingCompleted: s.completed,
    onboardingStartedAt: iso(s.startedAt),
    onboardingCompletedAt: iso(s.completedAt),
  };
}

/** Onboarding from the stored JSON; absent means not started. */
export function onboardingFromJson(value: JsonValue | undefined): OnboardingState {
  if (!isObject(value)) return { ...NOT_STARTED };
  const step = value["step"];
  return {
    onboardingStep: ONBOARDING_STEPS.includes(step as StepName) ? (step as StepName) : "welcome",
    onboardingCompleted: value["completed"] === true,
    onboardingStartedAt: isoFromJson(value["started_at"]),
    onboardingCompletedAt: isoFromJson(value["completed_at"]),
  };
}

/** Flags from the stored JSON; absent means none. */
export function flagsFromJson(value: JsonValue | undefined): Record<string, boolean> {
  const flags: Record<string, boolean> = {};
  if (isObject(value)) {
    for (const [key, enabled] of Object.entries(value)) {
      if (typeof enabled === "boolean") flags[key] = enabled;
    }
  }
  return flags;
}

/** Deep equality of JSON values (object key order ignored). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  }
  const ak = Object.keys(a as object);
  const bk = Object.keys(b as object);
  return (
    ak.length === bk.length &&
    ak.every((k) => Object.prototype.hasOwnProperty.call(b, k) && jsonEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  );
}
