// A page of commands kept current from the live stream, with the rows the user expanded.

import { useCallback, useEffect, useState } from 'preact/hooks';
import { listCommands } from '../api/commands';
import { live } from '../api/live';
import type { ActionKind, CommandPage, CommandStatus, CommandSummary } from '../api/types';
import { applyCommand } from '../lib/fleet';
import { useAsync } from '../lib/hooks';

export interface CommandPageView {
  device?: string;
  status?: CommandStatus;
  action?: ActionKind;
  /** 1-based. */
  page: number;
  limit: number;
}

export function useCommandPage(v: CommandPageView) {
  const offset = (v.page - 1) * v.limit;
  const list = useAsync(
    (signal) =>
      listCommands({ device: v.device, status: v.status, action: v.action, limit: v.limit, offset }, signal),
    [v.device, v.status, v.action, offset, v.limit],
  );
  const [expanded, setExpanded] = useState<ReadonlySet<string>>(new Set());

  const view = { device: v.device, status: v.status, action: v.action, offset, limit: v.limit };
  /** Puts a command's newer state into the page. */
  const update = (c: CommandSummary) =>
    list.setData((p: CommandPage | undefined) => (p ? applyCommand(p, c, view) : p));

  const devices = v.device ? [v.device] : [...new Set(list.data?.items.map((c) => c.device) ?? [])];
  const key = devices.join(',');
  useEffect(
    () => live.watch(devices, { command: update }),
    [key, v.device, v.status, v.action, offset, v.limit],
  );

  const toggle = useCallback(
    (id: string) =>
      setExpanded((s) => {
        const n = new Set(s);
        if (!n.delete(id)) n.add(id);
        return n;
      }),
    [],
  );
  const expand = useCallback((id: string) => setExpanded((s) => new Set(s).add(id)), []);
  return { list, expanded, toggle, expand, update };
}
