import { describe, expect, it } from 'vitest';
import { ApiError } from '../api/client';
import {
  browserName,
  groupSecret,
  newPasswordError,
  otpauthSecret,
  passwordErrorText,
  signInErrorText,
} from './account';

describe('sign-in messages', () => {
  it('says how long a lockout or rate limit lasts', () => {
    expect(signInErrorText(new ApiError(423, 'Locked', 'locked', undefined, 540))).toBe(
      'Too many failed sign-ins: this account is locked for now. Try again in 9 min.',
    );
    expect(signInErrorText(new ApiError(429, 'Too Many Requests', 'slow down', undefined, 12))).toBe(
      'Too many sign-in attempts from your address. Wait 12 s and try again.',
    );
    expect(signInErrorText(new ApiError(429, 'Too Many Requests', 'slow down'))).toMatch(/Wait a moment/);
  });

  it('shows the problem detail otherwise', () => {
    expect(signInErrorText(new ApiError(401, 'Unauthorized', 'invalid user name or password'))).toBe(
      'invalid user name or password',
    );
    expect(signInErrorText(new ApiError(400, 'Bad Request', 'send either `code` or `recovery_code`'))).toBe(
      'send either `code` or `recovery_code`',
    );
    expect(passwordErrorText(new ApiError(403, 'Forbidden', 'the current password is wrong'))).toBe(
      'the current password is wrong',
    );
    expect(passwordErrorText(new ApiError(423, 'Locked', 'x', undefined, 60))).toMatch(/Try again in 1 min/);
  });
});

describe('new passwords', () => {
  it('checks length, change and repetition', () => {
    expect(newPasswordError('old', 'short', 'short')).toMatch(/12/);
    expect(newPasswordError('same password 1', 'same password 1', 'same password 1')).toMatch(
      /differ from the current/,
    );
    expect(newPasswordError('old', 'a long new password', 'a long new passwort')).toMatch(/differ/);
    expect(newPasswordError('old', 'a long new password', 'a long new password')).toBeNull();
  });
});

describe('MFA setup', () => {
  it('finds the secret in an otpauth URI', () => {
    expect(otpauthSecret('otpauth://totp/pifleet:admin?secret=JBSWY3DPEHPK3PXP&issuer=pifleet')).toBe(
      'JBSWY3DPEHPK3PXP',
    );
    expect(otpauthSecret('otpauth://totp/x')).toBeNull();
    expect(groupSecret('JBSWY3DPEHPK3PXP')).toBe('JBSW Y3DP EHPK 3PXP');
    expect(groupSecret('ABCDEF')).toBe('ABCD EF');
  });
});

describe('browserName', () => {
  it('names common clients', () => {
    expect(
      browserName(
        'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
      ),
    ).toBe('Chrome on Linux');
    expect(browserName('Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Gecko/20100101 Firefox/133.0')).toBe(
      'Firefox on macOS',
    );
    expect(
      browserName(
        'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile Safari/604.1',
      ),
    ).toBe('Safari on iOS');
    expect(browserName('curl/8.5.0')).toBe('curl');
    expect(browserName('')).toBe('Unknown client');
    expect(browserName('x'.repeat(80))).toHaveLength(58);
  });
});
