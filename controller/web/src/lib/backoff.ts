/** Delay before reconnect attempt `attempt` (0-based): exponential from `baseMs`, capped at
 * `capMs`, with jitter so that many browsers do not reconnect in step. */
export function backoffDelay(
  attempt: number,
  random: () => number = Math.random,
  baseMs = 1_000,
  capMs = 30_000,
): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}
