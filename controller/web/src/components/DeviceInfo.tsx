// The read-only parts of a device page: live values, inventory with certificates, and the
// state of its allowlisted services.

import type { ComponentChildren } from 'preact';
import type { DeviceDetail } from '../api/types';
import {
  formatBytes,
  formatDate,
  formatDuration,
  formatPercent,
  formatTemp,
  NONE,
  share,
} from '../lib/format';
import { decodeThrottled, tempTone } from '../lib/health';
import { useNow } from '../lib/hooks';
import { Empty } from './States';
import { DateTime, RelTime } from './Time';

function Fact({ label, children, testId }: { label: string; children: ComponentChildren; testId?: string }) {
  return (
    <div data-testid={testId}>
      <dt>{label}</dt>
      <dd>{children}</dd>
    </div>
  );
}

export function LiveValues({ d }: { d: DeviceDetail }) {
  const mem = share(d.mem_used, d.mem_total);
  const disk = share(d.disk_used, d.disk_total);
  const throttling = decodeThrottled(d.throttled);
  return (
    <section class="card" aria-labelledby="live-title" data-testid="live-values">
      <h2 id="live-title">Now</h2>
      <dl class="stats">
        <Fact label="CPU" testId="live-cpu">
          <span class="stat">{formatPercent(d.cpu_pct)}</span>
        </Fact>
        <Fact label="Memory" testId="live-memory">
          <span class="stat">{formatPercent(mem)}</span>
          {mem !== null && (
            <span class="sub">
              {formatBytes(d.mem_used)} of {formatBytes(d.mem_total)}
            </span>
          )}
        </Fact>
        <Fact label="Temperature" testId="live-temp">
          <span class={`stat temp ${tempTone(d.temp_c)}`}>{formatTemp(d.temp_c)}</span>
        </Fact>
        <Fact label="Disk" testId="live-disk">
          <span class="stat">{formatPercent(disk)}</span>
          {disk !== null && (
            <span class="sub">
              {formatBytes(d.disk_used)} of {formatBytes(d.disk_total)}
            </span>
          )}
        </Fact>
        <Fact label="Throttling" testId="live-throttled">
          {throttling === null ? (
            <span class="stat muted">{NONE}</span>
          ) : throttling.now.length > 0 ? (
            <span class="stat stat-text warn-text">{throttling.now.join(', ')}</span>
          ) : (
            <span class="stat">OK</span>
          )}
          {throttling && throttling.past.length > 0 && (
            <span class="sub">since boot: {throttling.past.join(', ')}</span>
          )}
        </Fact>
        <Fact label="Uptime" testId="live-uptime">
          <span class="stat">{formatDuration(d.uptime_s)}</span>
        </Fact>
        <Fact label="Last seen" testId="live-last-seen">
          <span class="stat">
            <RelTime ms={d.last_seen} />
          </span>
        </Fact>
      </dl>
    </section>
  );
}

function CertState({ c, now }: { c: DeviceDetail['certificates'][number]; now: number }) {
  if (c.revoked_at !== null) return <span class="badge badge-muted">revoked</span>;
  if (c.not_after <= now) return <span class="badge badge-bad">expired</span>;
  return <span class="badge badge-ok">valid</span>;
}

export function Inventory({ d }: { d: DeviceDetail }) {
  const now = useNow();
  return (
    <section class="card" aria-labelledby="inventory-title" data-testid="inventory">
      <h2 id="inventory-title">Inventory</h2>
      <dl class="facts">
        <Fact label="Hostname">{d.hostname ?? NONE}</Fact>
        <Fact label="Model">{d.model ?? NONE}</Fact>
        <Fact label="OS">{d.os ?? NONE}</Fact>
        <Fact label="Kernel">
          <span class="mono">{d.kernel ?? NONE}</span>
        </Fact>
        <Fact label="Architecture">
          <span class="mono">{d.arch ?? NONE}</span>
        </Fact>
        <Fact label="Agent version">
          <span class="mono">{d.agent_version ?? NONE}</span>
        </Fact>
        <Fact label="Enrolled">
          <DateTime ms={d.enrolled_at} />
        </Fact>
        <Fact label="First seen">
          <DateTime ms={d.first_seen} />
        </Fact>
        <Fact label="Last connected">
          <DateTime ms={d.hello_at} />
        </Fact>
        {d.needs_review && (
          <Fact label="Needs review">
            <span data-testid="review-reason">{d.review_reason ?? 'yes'}</span>
          </Fact>
        )}
        {d.revoked_at !== null && (
          <Fact label="Revoked">
            <DateTime ms={d.revoked_at} />
          </Fact>
        )}
      </dl>
      <h3>Certificates</h3>
      {d.certificates.length === 0 ? (
        <p class="muted">No certificates.</p>
      ) : (
        <div class="table-scroll">
          <table class="table compact" data-testid="certificates">
            <thead>
              <tr>
                <th scope="col">Serial</th>
                <th scope="col">Issued</th>
                <th scope="col">Expires</th>
                <th scope="col">State</th>
              </tr>
            </thead>
            <tbody>
              {d.certificates.map((c) => (
                <tr key={c.serial}>
                  <td class="mono serial">{c.serial}</td>
                  <td>{formatDate(c.issued_at)}</td>
                  <td>
                    {formatDate(c.not_after)}{' '}
                    <span class="sub">
                      (<RelTime ms={c.not_after} />)
                    </span>
                  </td>
                  <td>
                    <CertState c={c} now={now} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

export function Services({ d }: { d: DeviceDetail }) {
  const services = d.services;
  return (
    <section class="card" aria-labelledby="services-title" data-testid="services">
      <div class="card-head">
        <h2 id="services-title">Services</h2>
        {d.services_at != null && (
          <span class="muted">
            reported <RelTime ms={d.services_at} />
          </span>
        )}
      </div>
      {services.length === 0 ? (
        <Empty>
          {d.capabilities === null
            ? 'The agent has not reported its services yet.'
            : 'No services are on this device’s allowlist.'}
        </Empty>
      ) : (
        <div class="table-scroll">
          <table class="table compact">
            <thead>
              <tr>
                <th scope="col">Unit</th>
                <th scope="col">State</th>
                <th scope="col">Detail</th>
              </tr>
            </thead>
            <tbody>
              {services.map((s) => (
                <tr key={s.unit} data-testid="service-row" data-unit={s.unit} data-active={s.active}>
                  <td class="mono">{s.unit}</td>
                  <td>
                    <span
                      class={`badge badge-${s.active === 'active' ? 'ok' : s.active === 'failed' ? 'bad' : s.active === 'inactive' ? 'muted' : 'busy'}`}
                    >
                      {s.active}
                    </span>
                  </td>
                  <td>{s.sub}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
