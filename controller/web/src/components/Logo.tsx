import logo from '../assets/favicon.svg';

/** The pifleet mark (decorative: the word next to it names the product). */
export function Logo() {
  return <img class="brand-mark" src={logo} alt="" width={20} height={20} />;
}
