/**
 * A Hub group's quota as the Hub stores it: the group's properties, with one flat key per
 * quota field (`potluck.tokens_per_minute` = `"5000"`, the form the Hub's admin page edits and
 * the engine reads; engine/hubgroups.py). What the dashboard writes when an admin edits a
 * group's quota through the Hub's API with their own token. No DOM, no JupyterLab imports.
 */

import { QuotaValue } from './model';

export const PROPERTY = 'potluck';

/** A quota value as the Hub's admin page would hold it: text ("5000", "none", "a, b"). */
export function groupQuotaText(value: QuotaValue): string {
  if (value === null) {
    return 'none';
  }
  if (Array.isArray(value)) {
    return value.join(', ');
  }
  return String(value);
}

/**
 * The group's properties with its quota replaced by `fields`: every other property kept as it
 * was (a `course` an admin added stays), the quota written as flat keys only (an older
 * `potluck` object or string is folded in: it would otherwise still set the fields left out).
 */
export function propertiesWithQuota(
  properties: { [key: string]: unknown },
  fields: { [field: string]: QuotaValue }
): { [key: string]: unknown } {
  const out: { [key: string]: unknown } = {};
  for (const key of Object.keys(properties || {})) {
    if (key !== PROPERTY && !key.startsWith(`${PROPERTY}.`)) {
      out[key] = properties[key];
    }
  }
  for (const field of Object.keys(fields)) {
    out[`${PROPERTY}.${field}`] = groupQuotaText(fields[field]);
  }
  return out;
}

/** Whether a token's scopes let it write a group's properties (`groups`, or `groups!group=NAME`). */
export function canEditGroup(scopes: string[], group: string): boolean {
  return scopes.some(s => s === 'groups' || s === `groups!group=${group}`);
}
