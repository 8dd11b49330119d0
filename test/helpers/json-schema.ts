/**
 * A JSON Schema validator for exactly the keywords zod's toJSONSchema emits for smarthost's config, so the
 * tests can check YAML files against config/smarthost.schema.json without adding ajv. A keyword it does not
 * know is an error, never silently ignored: if the generator starts emitting something new, the test says
 * so instead of passing.
 */

type Schema = Record<string, unknown>;

const ANNOTATIONS = new Set(['$schema', 'title', 'description', 'default', 'examples']);

/** Problems of `value` against `schema`, as "path: problem"; empty when valid. */
export function validate(schema: Schema, value: unknown, path = '$'): string[] {
  const problems: string[] = [];
  for (const [keyword, arg] of Object.entries(schema)) {
    if (ANNOTATIONS.has(keyword)) continue;
    switch (keyword) {
      case 'type': {
        const ok =
          arg === 'integer' ? Number.isInteger(value)
          : arg === 'number' ? typeof value === 'number'
          : arg === 'array' ? Array.isArray(value)
          : arg === 'object' ? typeof value === 'object' && value !== null && !Array.isArray(value)
          : arg === 'null' ? value === null
          : typeof value === arg;
        if (!ok) return [`${path}: expected ${String(arg)}, got ${JSON.stringify(value)}`];
        break;
      }
      case 'enum':
        if (!(arg as unknown[]).includes(value)) problems.push(`${path}: expected one of ${JSON.stringify(arg)}`);
        break;
      case 'const':
        if (value !== arg) problems.push(`${path}: expected ${JSON.stringify(arg)}`);
        break;
      case 'pattern':
        if (typeof value === 'string' && !new RegExp(arg as string).test(value)) problems.push(`${path}: does not match ${String(arg)}`);
        break;
      case 'minLength':
        if (typeof value === 'string' && [...value].length < (arg as number)) problems.push(`${path}: shorter than ${String(arg)}`);
        break;
      case 'maxLength':
        if (typeof value === 'string' && [...value].length > (arg as number)) problems.push(`${path}: longer than ${String(arg)}`);
        break;
      case 'minimum':
        if (typeof value === 'number' && value < (arg as number)) problems.push(`${path}: below ${String(arg)}`);
        break;
      case 'maximum':
        if (typeof value === 'number' && value > (arg as number)) problems.push(`${path}: above ${String(arg)}`);
        break;
      case 'exclusiveMinimum':
        if (typeof value === 'number' && value <= (arg as number)) problems.push(`${path}: not above ${String(arg)}`);
        break;
      case 'exclusiveMaximum':
        if (typeof value === 'number' && value >= (arg as number)) problems.push(`${path}: not below ${String(arg)}`);
        break;
      case 'minItems':
        if (Array.isArray(value) && value.length < (arg as number)) problems.push(`${path}: fewer than ${String(arg)} items`);
        break;
      case 'maxItems':
        if (Array.isArray(value) && value.length > (arg as number)) problems.push(`${path}: more than ${String(arg)} items`);
        break;
      case 'items':
        if (Array.isArray(value)) value.forEach((v, i) => problems.push(...validate(arg as Schema, v, `${path}[${i}]`)));
        break;
      case 'required':
        if (isObject(value)) for (const key of arg as string[]) if (!(key in value)) problems.push(`${path}.${key}: required`);
        break;
      case 'properties':
        if (isObject(value)) {
          for (const [key, sub] of Object.entries(arg as Record<string, Schema>)) {
            if (key in value) problems.push(...validate(sub, value[key], `${path}.${key}`));
          }
        }
        break;
      case 'additionalProperties':
        if (isObject(value)) {
          const known = new Set(Object.keys((schema.properties as object | undefined) ?? {}));
          for (const [key, v] of Object.entries(value)) {
            if (known.has(key)) continue;
            if (arg === false) problems.push(`${path}.${key}: unknown key`);
            else problems.push(...validate(arg as Schema, v, `${path}.${key}`));
          }
        }
        break;
      case 'propertyNames':
        if (isObject(value)) for (const key of Object.keys(value)) problems.push(...validate(arg as Schema, key, `${path}{${key}}`));
        break;
      case 'anyOf':
      case 'oneOf': {
        const results = (arg as Schema[]).map((s) => validate(s, value, path));
        const passing = results.filter((r) => r.length === 0).length;
        if (passing === 0) problems.push(`${path}: matches none of ${keyword}: ${results.map((r) => r[0]).join(' | ')}`);
        else if (keyword === 'oneOf' && passing > 1) problems.push(`${path}: matches ${passing} alternatives of oneOf`);
        break;
      }
      case 'allOf':
        for (const s of arg as Schema[]) problems.push(...validate(s, value, path));
        break;
      default:
        throw new Error(`json-schema helper: unsupported keyword "${keyword}" at ${path}; teach test/helpers/json-schema.ts`);
    }
  }
  return problems;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
