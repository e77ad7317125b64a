/** A percentage as text with a small bar behind it (the width is set through the CSSOM,
 * which the CSP allows). */
export function Meter({ pct, text }: { pct: number | null; text: string }) {
  if (pct === null) return <span class="muted">{text}</span>;
  const clamped = Math.max(0, Math.min(100, pct));
  const tone = clamped >= 90 ? 'high' : clamped >= 75 ? 'mid' : 'low';
  return (
    <span class="meter">
      <span class="meter-text">{text}</span>
      <span class="meter-track" aria-hidden="true">
        <span class={`meter-fill meter-${tone}`} style={{ width: `${clamped}%` }} />
      </span>
    </span>
  );
}
