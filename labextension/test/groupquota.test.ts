/**
 * A Hub group's quota as the dashboard writes it through the Hub's API (`jlpm test`).
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { canEditGroup, groupQuotaText, propertiesWithQuota } from '../src/groupquota';

describe('group quota properties', () => {
  it('writes each field as the flat key the admin page edits, as text', () => {
    assert.equal(groupQuotaText(5000), '5000');
    assert.equal(groupQuotaText(null), 'none');
    assert.equal(groupQuotaText(['a', 'b']), 'a, b');
    assert.equal(groupQuotaText('batch'), 'batch');
    assert.equal(groupQuotaText(1.5), '1.5');
  });

  it('keeps every other property and replaces the whole quota', () => {
    const before = {
      course: 'ml101',
      potluck: { weight: 2, kv_pages: 512 },
      'potluck.tokens_per_minute': '7000',
      'potluck.max_runs': '2',
      potluckish: 'kept'
    };
    const after = propertiesWithQuota(before, { tokens_per_minute: 5000, kv_pages: null });
    assert.deepEqual(after, {
      course: 'ml101',
      potluckish: 'kept',
      'potluck.tokens_per_minute': '5000',
      'potluck.kv_pages': 'none'
    });
    assert.deepEqual(propertiesWithQuota(before, {}), { course: 'ml101', potluckish: 'kept' });
  });

  it('lets only a token with the groups scope (for that group) edit', () => {
    assert.equal(canEditGroup(['groups'], 'students'), true);
    assert.equal(canEditGroup(['groups!group=students'], 'students'), true);
    assert.equal(canEditGroup(['groups!group=students'], 'staff'), false);
    assert.equal(canEditGroup(['read:groups', 'access:services!service=potluck'], 'students'), false);
  });
});
