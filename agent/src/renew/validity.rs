//! When a certificate is due for renewal: its notBefore/notAfter read straight from the DER
//! (a few lines of walking the TBS structure instead of an X.509 crate in the agent's
//! binary budget), and the point where a third of its lifetime remains.

/// notBefore and notAfter of a DER certificate, Unix seconds.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    // [0] version, when present.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    rest = tlv(rest, 0x02)?.1; // serialNumber
    rest = tlv(rest, 0x30)?.1; // signature algorithm
    rest = tlv(rest, 0x30)?.1; // issuer
    let (validity, _) = tlv(rest, 0x30)?;
    let (not_before, after) = time(validity)?;
    let (not_after, _) = time(after)?;
    Some((not_before, not_after))
}

/// When to renew: once no more than a third of the lifetime remains.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_after - (not_after - not_before).max(0) / 3
}

/// One DER element of the expected tag: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), and what follows.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (text, rest) = match input.first()? {
        0x17 => tlv(input, 0x17)?,
        0x18 => tlv(input, 0x18)?,
        _ => return None,
    };
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |s: &[u8]| s.iter().fold(0i64, |a, &d| a * 10 + i64::from(d - b'0'));
    let (year, tail) = match digits.len() {
        12 => {
            let yy = num(&digits[..2]);
            // RFC 5280: 50–99 are 19xx, 00–49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        14 => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let [m, d, hh, mm, ss] = [0, 2, 4, 6, 8].map(|i| num(&tail[i..i + 2]));
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some((
        days_from_civil(year, m, d) * 86_400 + hh * 3_600 + mm * 60 + ss,
        rest,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_when_a_third_of_the_lifetime_remains() {
        // (notBefore, notAfter, renew at)
        let cases = [
            (0, 300, 200),
            (1_000, 1_030, 1_020),
            (0, 365 * 86_400, 365 * 86_400 - 365 * 86_400 / 3),
            // A lifetime not divisible by three rounds towards renewing later, never past
            // the end.
            (0, 31, 21),
            // A certificate that names its end before its start: due at once.
            (100, 50, 50),
        ];
        for (nb, na, want) in cases {
            assert_eq!(renew_at(nb, na), want, "{nb}..{na}");
        }
    }

    #[test]
    fn dates_convert_to_unix_seconds() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        let utc = [
            0x17, 13, b'2', b'6', b'1', b'2', b'0', b'6', b'1', b'0', b'0', b'0', b'0', b'5', b'Z',
        ];
        assert_eq!(time(&utc).map(|t| t.0), Some(1_796_551_205));
        let gen_time = b"\x18\x0f20501231235959Z";
        assert_eq!(time(gen_time).map(|t| t.0), Some(2_556_143_999));
        assert_eq!(time(b"\x17\x0d2612061000xxZ"), None);
    }

    #[test]
    fn validity_of_a_real_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["pi-01".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 3, 4);
        let cert = params.self_signed(&key).unwrap();
        let (nb, na) = validity(cert.der()).unwrap();
        assert_eq!(nb, days_from_civil(2026, 1, 2) * 86_400);
        assert_eq!(na, days_from_civil(2051, 3, 4) * 86_400);
        // Truncated or garbage input is refused, never a panic.
        for n in 0..cert.der().len() {
            let _ = validity(&cert.der()[..n]);
        }
        assert_eq!(validity(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(validity(&[]), None);
    }
}
