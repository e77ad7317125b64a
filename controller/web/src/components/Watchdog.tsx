// The device's watchdog events: which allowlisted units crash-loop now, and the newest
// events (crash loops, flapping, systemd giving up, the watchdog's starts, recoveries).

import { unitEvents } from '../api/devices';
import { useAsync } from '../lib/hooks';
import { unitEventKind } from '../lib/watchdog';
import { Empty, ErrorBox, Loading } from './States';
import { RelTime } from './Time';

/** `generation` changes when the device's details change, to read the events again. */
export function Watchdog({ deviceId, generation }: { deviceId: string; generation: number }) {
  const events = useAsync((signal) => unitEvents(deviceId, signal), [deviceId, generation]);
  const data = events.data;
  return (
    <section class="card" aria-labelledby="watchdog-title" data-testid="watchdog">
      <div class="card-head">
        <h2 id="watchdog-title">Watchdog</h2>
        {data && data.crash_looping.length > 0 && (
          <span class="badge badge-bad" data-testid="watchdog-crash-looping">
            crash-looping: {data.crash_looping.join(', ')}
          </span>
        )}
      </div>
      {events.error !== undefined && !events.loading ? (
        <ErrorBox error={events.error} onRetry={events.reload} />
      ) : !data ? (
        <Loading label="Loading watchdog events…" />
      ) : data.events.length === 0 ? (
        <Empty>The watchdog has reported nothing about this device’s services.</Empty>
      ) : (
        <div class="table-scroll">
          <table class="table compact">
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Unit</th>
                <th scope="col">Event</th>
                <th scope="col">Detail</th>
              </tr>
            </thead>
            <tbody>
              {data.events.map((e, i) => {
                const k = unitEventKind(e.kind);
                return (
                  <tr key={`${e.at}-${i}`} data-testid="watchdog-row" data-unit={e.unit} data-kind={e.kind}>
                    <td>
                      <RelTime ms={e.at} />
                    </td>
                    <td class="mono">{e.unit}</td>
                    <td>
                      <span class={`badge badge-${k.tone}`}>{k.label}</span>
                    </td>
                    <td>{e.detail}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
