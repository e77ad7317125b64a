// The admin API's JSON shapes, as `controller/src/api/*.rs` serializes them. Times are Unix
// milliseconds unless a name says otherwise.

export type Role = 'viewer' | 'operator' | 'admin';

export interface SessionUser {
  name: string;
  role: Role;
  must_change_password: boolean;
  mfa_enabled: boolean;
}

/** `POST /auth/login`, `/auth/login/mfa` and `/auth/refresh`. */
export interface TokenResponse {
  mfa_required: boolean;
  mfa_token?: string;
  access_token?: string;
  token_type?: string;
  /** Seconds the access token is valid. */
  expires_in?: number;
  user?: SessionUser;
}

export interface Whoami {
  name: string;
  role: Role;
  session_id: string;
  mfa_enabled: boolean;
  /** The role requires MFA (not set up yet when `mfa_enabled` is false). */
  mfa_required: boolean;
  must_change_password: boolean;
  permissions: string[];
}

export interface FleetSummary {
  enrolled: number;
  online: number;
  offline: number;
  alerting: number;
  revoked: number;
}

export type DeviceStatus = 'online' | 'offline' | 'revoked';
export type AlertKind = 'temperature' | 'under_voltage' | 'throttling' | 'disk';
export type DeviceSort = 'id' | 'hostname' | 'last_seen' | 'cpu' | 'memory' | 'temperature';
export type SortOrder = 'asc' | 'desc';
export type Labels = Record<string, string>;

export interface DeviceSummary {
  id: string;
  labels: Labels;
  status: DeviceStatus;
  hostname: string | null;
  model: string | null;
  agent_version: string | null;
  last_seen: number | null;
  enrolled_at: number;
  cpu_pct: number | null;
  mem_used: number | null;
  mem_total: number | null;
  temp_c: number | null;
  throttled: number | null;
  disk_used: number | null;
  disk_total: number | null;
  uptime_s: number | null;
  /** Absent from controllers that predate alerts. */
  alerts?: AlertKind[];
}

export interface DevicePage {
  total: number;
  items: DeviceSummary[];
}

export interface Certificate {
  serial: string;
  issued_at: number;
  not_after: number;
  revoked_at: number | null;
}

export interface ScriptCapability {
  name: string;
  allowed_args: string[];
}

/** What the device's local allowlist permits. */
export interface Capabilities {
  ping: boolean;
  reboot: boolean;
  services: string[];
  journal_units: string[];
  scripts: ScriptCapability[];
  set_interval: { min_s: number; max_s: number } | null;
  reported_at: number;
}

export interface ServiceState {
  unit: string;
  active: string;
  sub: string;
}

/** A `details` event: a device's capabilities and unit states, as in its detail. */
export interface DeviceDetails {
  id: string;
  capabilities: Capabilities | null;
  services: ServiceState[];
  services_at: number | null;
}

export interface DeviceDetail extends DeviceSummary {
  os: string | null;
  kernel: string | null;
  arch: string | null;
  first_seen: number | null;
  revoked_at: number | null;
  last_seq: number | null;
  hello_at: number | null;
  certificates: Certificate[];
  /** `null` until the agent reports; absent from older controllers. */
  capabilities?: Capabilities | null;
  services?: ServiceState[];
  services_at?: number | null;
}

export interface HistoryPoint {
  t: number;
  samples: number;
  cpu_pct_avg: number;
  cpu_pct_max: number;
  load1_avg: number;
  mem_used_avg: number;
  mem_total_max: number;
  temp_c_avg: number | null;
  temp_c_max: number | null;
  disk_used_avg: number;
  disk_total_max: number;
  net_rx_bytes: number;
  net_tx_bytes: number;
}

export interface History {
  from: number;
  to: number;
  bucket_ms: number;
  points: HistoryPoint[];
}

export type ServiceOp = 'status' | 'start' | 'stop' | 'restart';

export type Action =
  | { kind: 'ping' }
  | { kind: 'reboot' }
  | { kind: 'service'; op: ServiceOp; unit: string }
  | { kind: 'journal'; unit: string; lines: number }
  | { kind: 'script'; name: string; args: string[] }
  | { kind: 'set_interval'; seconds: number };

export type ActionKind = Action['kind'];

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
] as const;
export type CommandStatus = (typeof COMMAND_STATUSES)[number];

export interface CommandSummary {
  id: string;
  device: string;
  action: Action;
  status: CommandStatus;
  reason: string | null;
  created_at: number;
  expires_at: number;
  sent_at: number | null;
  accepted_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  exit_code: number | null;
  duration_ms: number | null;
  stdout_len: number | null;
  stderr_len: number | null;
}

export interface CommandDetail extends CommandSummary {
  issued_at: number | null;
  stdout: string | null;
  stdout_sha256: string | null;
  stderr: string | null;
  stderr_sha256: string | null;
}

export interface CommandPage {
  total: number;
  items: CommandSummary[];
}

export interface SentCommands {
  commands: { id: string; device: string }[];
}

export type TokenState = 'unused' | 'used' | 'expired' | 'revoked';

export interface TokenInfo {
  id: string;
  name: string | null;
  labels: Labels;
  created_at: number;
  expires_at: number;
  state: TokenState;
  used_by: string | null;
  used_at: number | null;
}

export interface CreatedToken {
  id: string;
  token: string;
  expires_at: number;
  enroll_command: string;
}

export interface UserView {
  name: string;
  role: Role;
  created_at: number;
  password_changed_at: number;
  disabled: boolean;
  mfa_enabled: boolean;
  must_change_password: boolean;
}

export interface CreatedUser {
  user: UserView;
  one_time_password?: string;
}

export interface SecuritySettings {
  mfa_required_roles: Role[];
}

export interface SessionView {
  id: string;
  created_at: number;
  last_used_at: number;
  expires_at: number;
  ip: string;
  user_agent: string;
  current: boolean;
}

export interface MfaSetup {
  otpauth_uri: string;
  qr_png_base64: string;
}

export interface AuditEntry {
  seq: number;
  at: number;
  actor: string;
  source: string;
  action: string;
  target: string;
  outcome: string;
  detail: string;
  prev_hash: string;
  hash: string;
}

export interface AuditPage {
  items: AuditEntry[];
  head: number | null;
}

export interface VerifyReport {
  intact: boolean;
  entries: number;
  broken_at: number | null;
  problem: string | null;
}
