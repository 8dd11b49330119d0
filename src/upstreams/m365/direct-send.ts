/**
 * Where the tenant's mail goes in (its MX host), and who can be reached through it without a connector.
 * "How to set up a multifunction device or application to send email using Microsoft 365":
 * https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
 * Direct Send and connector relay both go to port 25 of the MX endpoint, whose name is the domain with dots
 * replaced by hyphens under mail.protection.outlook.com (newer tenants may have one under mx.microsoft:
 * give it as `host`).
 */
import { asciiDomain } from '../smtp-send.js';
import type { M365ConnectorUpstreamConfig } from './config.js';

/** contoso.com -> contoso-com.mail.protection.outlook.com */
export function mxHostForDomain(domain: string): string {
  return `${domain.toLowerCase().replace(/\.$/, '').replaceAll('.', '-')}.mail.protection.outlook.com`;
}

/** The host an m365-connector upstream connects to: `host` when given, else the one derived from `domain`. */
export function connectorHost(config: Pick<M365ConnectorUpstreamConfig, 'host' | 'domain'>): string {
  if (config.host !== undefined) return config.host;
  if (config.domain !== undefined) return mxHostForDomain(config.domain);
  throw new Error('m365-connector upstream without domain or host');
}

/**
 * Whether the upstream can deliver to `address`. A connector relays to anyone; Direct Send reaches only
 * mailboxes of the tenant, so a recipient outside acceptedDomains must be refused (at RCPT TO, or failed
 * permanently before sending), never handed to Exchange to be dropped or bounced later. Pure: the listener
 * (at RCPT TO) and the upstream (before sending) ask the same question.
 */
export function acceptsRecipient(config: Pick<M365ConnectorUpstreamConfig, 'mode' | 'acceptedDomains'>, address: string): boolean {
  if (config.mode !== 'directSend') return true;
  const at = address.lastIndexOf('@');
  if (at < 0) return false;
  const domain = asciiDomain(address.slice(at + 1).replace(/\.$/, ''));
  return (config.acceptedDomains ?? []).some((accepted) => asciiDomain(accepted) === domain);
}

