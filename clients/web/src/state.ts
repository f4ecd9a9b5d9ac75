/**
 * The server state as this client last confirmed it (from a snapshot, the
 * change stream, or a write's answer), with the etags it knows, and the
 * flattening both it and the store go through so that the two can be
 * compared id by id. Whatever the store holds that differs from this state
 * is a local edit still to be written.
 *
 * @module
 */
import type { JsonValue } from "@bufbuild/protobuf";
import type { Changes, Content, Store, Tables, Values } from "tinybase";
import {
  CUSTOM_CELL,
  CUSTOM_TABLE,
  DEFAULT_PREFERENCES,
  FLAG_CELL,
  FLAGS_TABLE,
  NOT_STARTED,
  NO_PROFILE,
  PROFILE_VALUES,
  type ProfileState,
  ONBOARDING_VALUES,
  type OnboardingState,
  PREFERENCE_VALUES,
  type PreferencesState,
} from "./layout.js";

/** A custom value and its etag. */
export interface CustomEntry {
  /** The JSON value. */
  value: JsonValue;
  /** Its etag; undefined when a change arrived since the last one known. */
  etag: string | undefined;
}

/**
 * The server's state of one user. An etag is `undefined` when it is not
 * known (the stream does not carry etags) and `""` when nothing is stored.
 */
export interface ServerState {
  profile: ProfileState;
  preferences: PreferencesState;
  preferencesEtag: string | undefined;
  onboarding: OnboardingState;
  onboardingEtag: string | undefined;
  flags: Record<string, boolean>;
  flagsEtag: string | undefined;
  custom: Map<string, CustomEntry>;
}

/** A user with nothing stored. */
export function emptyState(): ServerState {
  return {
    profile: { ...NO_PROFILE },
    preferences: { ...DEFAULT_PREFERENCES },
    preferencesEtag: "",
    onboarding: { ...NOT_STARTED },
    onboardingEtag: "",
    flags: {},
    flagsEtag: "",
    custom: new Map(),
  };
}

/** One store location of the layout. */
export type Location =
  | { kind: "value"; id: string }
  | { kind: "cell"; table: string; row: string; cell: string };

/** Store locations of the layout and what they hold; absent means no value. */
export type Flat = Map<string, JsonValue>;

/** The map key of a location. */
export function locationKey(location: Location): string {
  return location.kind === "value"
    ? JSON.stringify(["v", location.id])
    : JSON.stringify(["c", location.table, location.row, location.cell]);
}

/** The location of a map key. */
export function parseLocationKey(key: string): Location {
  const parts = JSON.parse(key) as string[];
  return parts[0] === "v"
    ? { kind: "value", id: parts[1] ?? "" }
    : { kind: "cell", table: parts[1] ?? "", row: parts[2] ?? "", cell: parts[3] ?? "" };
}

/** A location as the error's `rolledBack` names it. */
export function describeLocation(location: Location): string {
  return location.kind === "value" ? `values/${location.id}` : `${location.table}/${location.row}/${location.cell}`;
}

const LAYOUT_VALUES: readonly string[] = [...PREFERENCE_VALUES, ...ONBOARDING_VALUES, ...PROFILE_VALUES];

/** The layout's locations in the server state. */
export function flattenState(state: ServerState): Flat {
  const flat: Flat = new Map();
  for (const id of PREFERENCE_VALUES) flat.set(locationKey({ kind: "value", id }), state.preferences[id]);
  for (const id of ONBOARDING_VALUES) {
    const value = state.onboarding[id];
    if (value !== undefined) flat.set(locationKey({ kind: "value", id }), value);
  }
  for (const id of PROFILE_VALUES) {
    const value = state.profile[id];
    if (value !== undefined) flat.set(locationKey({ kind: "value", id }), value);
  }
  for (const [row, enabled] of Object.entries(state.flags)) {
    flat.set(locationKey({ kind: "cell", table: FLAGS_TABLE, row, cell: FLAG_CELL }), enabled);
  }
  for (const [row, entry] of state.custom) {
    flat.set(locationKey({ kind: "cell", table: CUSTOM_TABLE, row, cell: CUSTOM_CELL }), entry.value);
  }
  return flat;
}

/** The layout's locations in the store (other ids are the application's own). */
export function flattenStore(store: Store): Flat {
  const flat: Flat = new Map();
  for (const id of LAYOUT_VALUES) {
    const value = store.getValue(id);
    if (value !== undefined) flat.set(locationKey({ kind: "value", id }), value as JsonValue);
  }
  for (const [table, cell] of [
    [FLAGS_TABLE, FLAG_CELL],
    [CUSTOM_TABLE, CUSTOM_CELL],
  ] as const) {
    for (const row of store.getRowIds(table)) {
      const value = store.getCell(table, row, cell);
      if (value !== undefined) flat.set(locationKey({ kind: "cell", table, row, cell }), value as JsonValue);
    }
  }
  return flat;
}

/** Store content for the state, keeping the application's own tables and values. */
export function contentFor(state: ServerState, store: Store): Content {
  const tables: Tables = {};
  for (const [tableId, table] of Object.entries(store.getTables())) {
    if (tableId !== FLAGS_TABLE && tableId !== CUSTOM_TABLE) tables[tableId] = table;
  }
  const values: Values = {};
  for (const [valueId, value] of Object.entries(store.getValues())) {
    if (!LAYOUT_VALUES.includes(valueId)) values[valueId] = value;
  }
  for (const [key, value] of flattenState(state)) {
    const location = parseLocationKey(key);
    if (location.kind === "value") {
      values[location.id] = value;
    } else {
      const table = (tables[location.table] ??= {});
      (table[location.row] ??= {})[location.cell] = value;
    }
  }
  return [tables, values];
}

/** TinyBase changes that set each location to its value (undefined deletes it). */
export function changesFor(updates: Map<string, JsonValue | undefined>): Changes | undefined {
  if (updates.size === 0) return undefined;
  const tables: Changes[0] = {};
  const values: Changes[1] = {};
  for (const [key, value] of updates) {
    const location = parseLocationKey(key);
    if (location.kind === "value") {
      values[location.id] = value;
    } else {
      const table = (tables[location.table] ??= {}) as Record<string, Record<string, JsonValue | undefined>>;
      (table[location.row] ??= {})[location.cell] = value;
    }
  }
  return [tables, values, 1];
}
