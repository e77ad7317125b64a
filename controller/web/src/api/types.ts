// The admin API's JSON shapes under the names the app uses. They come from the controller's
// OpenAPI document (`schema.gen.ts`, generated: `npm run api-types`); only what the document
// cannot say is written here. Times are Unix milliseconds unless a name says otherwise.

import type { components, operations } from './schema.gen';

type Schemas = components['schemas'];
type DeviceQuery = NonNullable<operations['list_devices']['parameters']['query']>;

export type Role = Schemas['Role'];
export type SessionUser = Schemas['SessionUser'];
/** `POST /auth/login`, `/auth/login/mfa` and `/auth/refresh`. */
export type TokenResponse = Schemas['TokenResponse'];
export type Whoami = Schemas['Whoami'];

export type FleetSummary = Schemas['FleetSummary'];
export type DeviceStatus = Schemas['DeviceStatus'];
export type AlertKind = Schemas['DeviceAlert'];
export type DeviceSort = NonNullable<DeviceQuery['sort']>;
export type SortOrder = NonNullable<DeviceQuery['order']>;
export type Labels = Record<string, string>;
export type DeviceSummary = Schemas['DeviceSummary'];
export type DevicePage = Schemas['DevicePage'];
export type Certificate = Schemas['Certificate'];
export type ScriptCapability = Schemas['ScriptCapability'];
/** What the device's local allowlist permits. */
export type Capabilities = Schemas['DeviceCapabilities'];
export type ServiceState = Schemas['ServiceState'];
export type DeviceDetail = Schemas['DeviceDetail'];
/**
 * A `details` event of the live stream (`GET /events`, which the document describes only as
 * text): a device's capabilities and unit states, as in its detail.
 */
export type DeviceDetails = Pick<DeviceDetail, 'id' | 'capabilities' | 'services' | 'services_at'>;
export type HistoryPoint = Schemas['HistoryPoint'];
export type History = Schemas['History'];
export type UnitEvent = Schemas['UnitEvent'];
export type UnitEvents = Schemas['UnitEvents'];

/** An action an operator sends (`POST /commands`). */
export type Action = Schemas['ActionSpec'];
/** An action as command listings show it: also deploy, rollback and the key announcements,
 * which only the controller creates. */
export type AnyAction = Schemas['ActionView'];
export type ActionKind = Action['kind'];
export type ServiceOp = Extract<Action, { kind: 'service' }>['op'];

export type CommandStatus = Schemas['CommandSummary']['status'];
/** Every command status, in lifecycle order (for filters). */
export const COMMAND_STATUSES = [
  'queued',
  'sent',
  'accepted',
  'running',
  'succeeded',
  'failed',
  'rejected',
  'expired',
  'cancelled',
] as const satisfies readonly CommandStatus[];
// The list names every status the document does: this fails to compile when one is missing.
const allStatusesListed: Exclude<CommandStatus, (typeof COMMAND_STATUSES)[number]> extends never
  ? true
  : never = true;
void allStatusesListed;

export type CommandSummary = Schemas['CommandSummary'];
export type CommandDetail = Schemas['CommandDetail'];
export type CommandPage = Schemas['CommandPage'];
export type SentCommands = Schemas['SentCommands'];

export type TokenState = Schemas['TokenState'];
export type TokenInfo = Schemas['TokenInfo'];
export type CreatedToken = Schemas['CreatedToken'];
export type EnrollmentRequest = Schemas['EnrollmentRequestView'];

export type UserView = Schemas['UserView'];
export type CreatedUser = Schemas['CreatedUser'];
export type SecuritySettings = Schemas['SecuritySettings'];
export type SessionView = Schemas['SessionView'];
export type MfaSetup = Schemas['MfaSetup'];

export type AuditEntry = Schemas['AuditEntry'];
export type AuditPage = Schemas['AuditPage'];
export type VerifyReport = Schemas['VerifyReport'];

export type ApprovalView = Schemas['ApprovalView'];
export type ApprovalStatus = Schemas['ApprovalStatus'];

export type ReleaseView = Schemas['ReleaseView'];
/** The query parameters of a release upload (`POST /releases`, the archive as the body). */
export type ReleaseParams = NonNullable<operations['upload_release']['parameters']['query']>;

export type NewRollout = Schemas['NewRollout'];
export type RolloutSettings = Schemas['RolloutSettingsBody'];
export type CreatedRollout = Schemas['CreatedRollout'];
export type PlannedDevice = Schemas['PlannedDeviceView'];
export type RolloutSummary = Schemas['RolloutSummary'];
export type RolloutDetail = Schemas['RolloutDetail'];
export type RolloutDevice = Schemas['RolloutDeviceView'];
export type RolloutEvent = Schemas['RolloutEventView'];
export type BatchView = Schemas['BatchView'];
export type DeviceApps = Schemas['DeviceApps'];
export type DeviceApp = Schemas['DeviceAppView'];
export type DeviceRollout = Schemas['DeviceRolloutView'];
