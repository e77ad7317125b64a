// Text to copy (a command line, recovery codes): a copy button, and when the clipboard is
// unavailable the text is selected for Ctrl+C.

import { useRef, useState } from 'preact/hooks';

export function CopyText({ text, label, testId }: { text: string; label: string; testId?: string }) {
  const ref = useRef<HTMLPreElement>(null);
  const [state, setState] = useState<'idle' | 'copied' | 'select'>('idle');

  const selectText = () => {
    const el = ref.current;
    const sel = window.getSelection();
    if (!el || !sel) return;
    const range = document.createRange();
    range.selectNodeContents(el);
    sel.removeAllRanges();
    sel.addRange(range);
  };

  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setState('copied');
    } catch {
      selectText();
      setState('select');
    }
  };

  return (
    <div class="copy">
      <pre ref={ref} class="copy-text" aria-label={label} data-testid={testId} tabIndex={0}>
        {text}
      </pre>
      <div class="copy-actions">
        <button
          type="button"
          class="button"
          onClick={copy}
          data-testid={testId ? `${testId}-copy` : undefined}
        >
          Copy
        </button>
        <span class="muted" role="status">
          {state === 'copied'
            ? 'Copied to the clipboard.'
            : state === 'select'
              ? 'Selected: press Ctrl+C (⌘C) to copy.'
              : ''}
        </span>
      </div>
    </div>
  );
}
