/**
 * The client's address, for the per-address pending-hold limit. Only what the platform's own
 * proxy wrote counts: a client can send any X-Forwarded-For it likes, and every proxy appends
 * on the right, so the entries left of the trusted proxies' are the client's to choose.
 */

/** Where the client address comes from. */
export interface ClientAddressConfig {
  /** Take the Nth X-Forwarded-For entry from the right (1 = rightmost, the last proxy's). */
  trustedProxyHops: number;
  /** A lower-case header the platform sets to the client's address; then X-Forwarded-For is ignored. */
  header: string | null;
}

/** The rightmost X-Forwarded-For entry: what a single platform proxy (Supabase's gateway) appends. */
export const DEFAULT_CLIENT_ADDRESS: ClientAddressConfig = { trustedProxyHops: 1, header: null };

/**
 * The client's normalized IP address, or null when the trusted entry is missing or is not an IP
 * address (the per-address limit then does not apply; the per-buyer one still does).
 */
export function clientAddress(
  request: Request,
  config: ClientAddressConfig = DEFAULT_CLIENT_ADDRESS,
): string | null {
  if (config.header) return ipAddress(request.headers.get(config.header) ?? "");
  const entries = request.headers.get("x-forwarded-for")?.split(",") ?? [];
  // Fewer entries than trusted proxies: the request did not come the way the operator said, so
  // no address rather than one the client wrote.
  return ipAddress(entries[entries.length - config.trustedProxyHops] ?? "");
}

function ipAddress(text: string): string | null {
  const value = text.trim();
  if (/^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/.test(value)) return value;
  if (!/^[0-9a-fA-F:.]{2,45}$/.test(value) || !value.includes(":")) return null;
  try {
    // The URL parser accepts exactly the IPv6 literals; it returns them normalized.
    return new URL(`http://[${value}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
}
