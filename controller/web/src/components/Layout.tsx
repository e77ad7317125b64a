// The frame of every signed-in page: header with the navigation the role may use, the live
// stream's state, the user menu; on phones the navigation folds into a menu button.

import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { logout } from '../api/auth';
import { live, type LiveStatus } from '../api/live';
import type { Whoami } from '../api/types';
import { isAdmin } from '../lib/commands';
import { Link, useLocation } from '../lib/router';
import { Logo } from './Logo';
import { toastError } from '../lib/toast';

interface NavItem {
  href: string;
  label: string;
  testId: string;
}

function navItems(user: Pick<Whoami, 'role'>): NavItem[] {
  const items: NavItem[] = [
    { href: '/', label: 'Fleet', testId: 'nav-fleet' },
    { href: '/commands', label: 'Commands', testId: 'nav-commands' },
    { href: '/releases', label: 'Releases', testId: 'nav-releases' },
    { href: '/rollouts', label: 'Rollouts', testId: 'nav-rollouts' },
    { href: '/approvals', label: 'Approvals', testId: 'nav-approvals' },
  ];
  if (isAdmin(user.role)) {
    items.push(
      { href: '/enrollment', label: 'Enrollment', testId: 'nav-enrollment' },
      { href: '/users', label: 'Users', testId: 'nav-users' },
      { href: '/audit', label: 'Audit', testId: 'nav-audit' },
    );
  }
  return items;
}

function isCurrent(href: string, path: string): boolean {
  if (href === '/') return path === '/' || path.startsWith('/devices/');
  return path === href || path.startsWith(`${href}/`);
}

const LIVE_TEXT: Record<LiveStatus, string> = {
  idle: '',
  connecting: 'Connecting…',
  live: 'Live',
  retrying: 'Reconnecting…',
};

function LiveIndicator() {
  const [status, setStatus] = useState<LiveStatus>(live.status());
  useEffect(() => live.onStatus(setStatus), []);
  return (
    <span class={`live live-${status}`} role="status" data-testid="live-status" data-status={status}>
      {LIVE_TEXT[status]}
    </span>
  );
}

export function Layout({ user, children }: { user: Whoami; children: ComponentChildren }) {
  const { path } = useLocation();
  const [menuOpen, setMenuOpen] = useState(false);
  const close = () => setMenuOpen(false);

  useEffect(close, [path]);

  const signOut = () => {
    logout().catch((e: unknown) => toastError(e, 'Sign-out'));
  };

  return (
    <div class="shell">
      <a class="skip-link" href="#main">
        Skip to content
      </a>
      <header class="topbar">
        <Link href="/" class="brand">
          <Logo />
          pifleet
        </Link>
        <button
          type="button"
          class="menu-button"
          aria-expanded={menuOpen}
          aria-controls="main-nav"
          onClick={() => setMenuOpen(!menuOpen)}
          data-testid="menu-button"
        >
          Menu
        </button>
        <nav id="main-nav" class={menuOpen ? 'nav open' : 'nav'} aria-label="Main">
          <ul>
            {navItems(user).map((item) => (
              <li key={item.href}>
                <Link
                  href={item.href}
                  data-testid={item.testId}
                  aria-current={isCurrent(item.href, path) ? 'page' : undefined}
                  onNavigate={close}
                >
                  {item.label}
                </Link>
              </li>
            ))}
          </ul>
          <div class="nav-user">
            <LiveIndicator />
            <Link
              href="/profile"
              data-testid="nav-profile"
              aria-current={path === '/profile' ? 'page' : undefined}
              onNavigate={close}
            >
              <span class="user-name">{user.name}</span>
              <span class="user-role">{user.role}</span>
            </Link>
            <button type="button" class="button subtle" onClick={signOut} data-testid="sign-out">
              Sign out
            </button>
          </div>
        </nav>
      </header>
      <main id="main" class="main" tabIndex={-1}>
        {children}
      </main>
    </div>
  );
}
