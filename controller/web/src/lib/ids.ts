/** A device id: 3–63 of a-z 0-9 and '-', not starting or ending with '-'. */
const DEVICE_ID = /^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;

export const DEVICE_ID_RULE = 'A device id is 3–63 of a-z 0-9 and -, not starting or ending with -.';

export function isDeviceId(s: string): boolean {
  return DEVICE_ID.test(s);
}

/** A user name: 1–64 of a-z 0-9 . _ -, starting with a letter or digit. */
const USER_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export const USER_NAME_RULE = '1–64 of a-z 0-9 . _ -, starting with a letter or digit.';

export function isUserName(s: string): boolean {
  return USER_NAME.test(s);
}
