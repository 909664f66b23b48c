// Starts Swagger UI on /schema (app/openapi.py): here, not in the page, since the CSP allows no inline script.
"use strict";
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  domNode: root,
  deepLinking: true,
  validatorUrl: null, // the online validator is another site, which the CSP (and a portal without internet) forbids
});
