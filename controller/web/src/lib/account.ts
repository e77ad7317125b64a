// Account texts and rules: sign-in errors, the password policy's client-side part, the TOTP
// secret of an otpauth URI, and readable names of session clients.

import { ApiError } from '../api/client';
import { formatDuration } from './format';
import { errorText } from './toast';

/** The message for a failed sign-in step: lockout and rate limits say how long to wait. */
export function signInErrorText(e: unknown): string {
  if (e instanceof ApiError) {
    const wait = e.retryAfter ? formatDuration(e.retryAfter) : null;
    if (e.status === 423) {
      return `Too many failed sign-ins: this account is locked for now.${wait ? ` Try again in ${wait}.` : ''}`;
    }
    if (e.status === 429) {
      return `Too many sign-in attempts from your address.${wait ? ` Wait ${wait} and try again.` : ' Wait a moment and try again.'}`;
    }
    if (e.status === 401) return e.detail || 'Invalid user name or password.';
  }
  return errorText(e);
}

export const MIN_PASSWORD = 12;

/** What is wrong with a new password before the server's own check, or null. */
export function newPasswordError(current: string, next: string, repeat: string): string | null {
  if (next.length < MIN_PASSWORD) return `The new password needs at least ${MIN_PASSWORD} characters.`;
  if (next === current) return 'The new password must differ from the current one.';
  if (next !== repeat) return 'The two new passwords differ.';
  return null;
}

export function passwordErrorText(e: unknown): string {
  if (e instanceof ApiError && e.status === 423) {
    const wait = e.retryAfter ? ` Try again in ${formatDuration(e.retryAfter)}.` : '';
    return `Too many wrong passwords: the account is locked for now.${wait}`;
  }
  return errorText(e);
}

/** The `secret` parameter of an otpauth URI, for typing into an authenticator by hand. */
export function otpauthSecret(uri: string): string | null {
  const q = uri.indexOf('?');
  if (q < 0) return null;
  return new URLSearchParams(uri.slice(q + 1)).get('secret');
}

/** Groups a base32 secret in fours for reading. */
export function groupSecret(secret: string): string {
  return secret.replace(/(.{4})(?=.)/g, '$1 ');
}

/** A short name for a browser from its user agent, for the session list. */
export function browserName(ua: string): string {
  if (ua === '') return 'Unknown client';
  const browser = /Edg\//.test(ua)
    ? 'Edge'
    : /Firefox\//.test(ua)
      ? 'Firefox'
      : /Chrome\//.test(ua)
        ? 'Chrome'
        : /Safari\//.test(ua)
          ? 'Safari'
          : /curl\//.test(ua)
            ? 'curl'
            : null;
  const os = /Android/.test(ua)
    ? 'Android'
    : /iPhone|iPad/.test(ua)
      ? 'iOS'
      : /Windows/.test(ua)
        ? 'Windows'
        : /Mac OS X|Macintosh/.test(ua)
          ? 'macOS'
          : /Linux/.test(ua)
            ? 'Linux'
            : null;
  if (!browser) return ua.length > 60 ? `${ua.slice(0, 57)}…` : ua;
  return os ? `${browser} on ${os}` : browser;
}
