// Validates an OpenAPI document with @readme/openapi-parser (the OpenAPI 3.1
// schema plus its own checks: duplicate operationIds and parameters, broken
// $refs) and prints it, as parsed, as JSON on stdout.
//
// With --answers FILE (a JSON array of {method, path, status, media, body}:
// answers sgpud gave, `path` the document's path template), checks each body
// against the schema the document gives that method, path, status and media
// type (Ajv, JSON Schema 2020-12) and prints instead a JSON array with, for
// each answer, the list of its errors (empty when it matches). An entry with
// "request": true is a request body sgpud accepted, checked against the
// operation's request body schema for that media type.
//
// usage: node validate.mjs DOC.yaml [--answers FILE]
// exit: 0 valid (the JSON on stdout), 1 invalid (the errors on stderr).
import { readFile } from 'node:fs/promises';
import { compileErrors, dereference, parse, validate } from '@readme/openapi-parser';
import Ajv2020 from 'ajv/dist/2020.js';

const [file, flag, answersFile] = process.argv.slice(2);
if (!file || (flag && (flag !== '--answers' || !answersFile))) {
  console.error('usage: node validate.mjs DOC.yaml [--answers FILE]');
  process.exit(2);
}
const text = await readFile(file, 'utf8');
if (!/^openapi: 3\.1\.\d+$/m.test(text)) {
  console.error(`${file}: not an OpenAPI 3.1 document`);
  process.exit(1);
}
// Each call parses the file afresh: validate() and dereference() change what they hold.
const result = await validate(file, { validate: { errors: { colorize: false } } });
if (!result.valid) {
  console.error(compileErrors(result));
  process.exit(1);
}
for (const w of result.warnings || []) console.error(`warning: ${w.message}`);

// (No process.exit() after writing: it would cut a stdout pipe short.)
if (!flag) process.stdout.write(JSON.stringify(await parse(file)));
else process.stdout.write(JSON.stringify(await checkAnswers()));

async function checkAnswers() {
const doc = await dereference(file);
const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
const answers = JSON.parse(await readFile(answersFile, 'utf8'));
const out = answers.map(({ method, path, status, media, body, request }) => {
  const op = doc.paths?.[path]?.[method];
  if (!op) return [`${method} ${path}: not in the document`];
  if (request) {
    const content = op.requestBody?.content?.[media];
    if (!content) return [`${method} ${path}: request media type ${media} is not documented`];
    const check = ajv.compile(content.schema || {});
    if (check(body)) return [];
    return check.errors.map((e) => `${method} ${path}: request body${e.instancePath} ${e.message}`);
  }
  const resp = op.responses?.[String(status)] || op.responses?.default;
  if (!resp) return [`${method} ${path}: status ${status} is not documented`];
  if (!resp.content) return body == null ? [] : [`${method} ${path} ${status}: a body where none is documented`];
  const content = resp.content[media] || resp.content['*/*'];
  if (!content) return [`${method} ${path} ${status}: media type ${media} is not documented`];
  if (!content.schema || body === undefined) return [];
  const check = ajv.compile(content.schema);
  if (check(body)) return [];
  return check.errors.map((e) => `${method} ${path} ${status}: body${e.instancePath} ${e.message}`);
});
return out;
}
