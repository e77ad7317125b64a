import { dismiss, toasts } from '../lib/toast';
import { useStore } from '../lib/store';

/** The toast region; always in the page so screen readers announce new messages. */
export function Toasts() {
  const list = useStore(toasts);
  return (
    <div class="toasts" aria-live="polite" aria-relevant="additions" data-testid="toasts">
      {list.map((t) => (
        <div key={t.id} class={`toast toast-${t.tone}`} role={t.tone === 'error' ? 'alert' : 'status'}>
          <span>{t.text}</span>
          <button type="button" class="icon-button" aria-label="Dismiss" onClick={() => dismiss(t.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
