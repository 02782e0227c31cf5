// API Management in front of the Function App: the service, its named values, the backend
// that carries the function host key, the chgate API imported from the endpoint catalog's
// OpenAPI document with its policy (policies/api.xml), and logging to Application Insights.
// docs/apim.md explains the policy.

@description('Azure region.')
param location string

@description('API Management service name (globally unique; it becomes <name>.azure-api.net).')
param name string

@description('Pricing tier. The policy needs rate-limit-by-key and the internal cache, which Consumption lacks (see main.bicep).')
@allowed([ 'Consumption', 'Developer', 'Basic', 'Standard', 'Premium', 'BasicV2', 'StandardV2', 'PremiumV2' ])
param sku string = 'BasicV2'

@description('Publisher e-mail (APIM sends service notifications there).')
param publisherEmail string

@description('Publisher name.')
param publisherName string

@description('The Entra tenant that issues the API\'s tokens.')
param entraTenantId string

@description('The API\'s Application ID URI, e.g. api://chgate.')
param apiAudience string

@description('The API app registration\'s client (application) id.')
param apiClientId string

@description('The one origin browsers may call from, or * for any (allow-credentials is false).')
param corsAllowedOrigin string = '*'

@description('URL path of the API on the gateway: https://<gateway>/<apiPath>/v1/...')
param apiPath string = 'chgate'

@description('The Function App (functionapp.bicep).')
param functionAppName string

@description('The Key Vault that holds the function host key for APIM (keyvault.bicep).')
param keyVaultName string

@description('Application Insights component APIM logs to (monitoring.bicep).')
param appInsightsName string

param tags object = {}

resource functionApp 'Microsoft.Web/sites@2025-03-01' existing = {
  name: functionAppName
}

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

var isV2 = endsWith(sku, 'V2')

resource apim 'Microsoft.ApiManagement/service@2024-05-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
    // Consumption has no units to choose.
    capacity: sku == 'Consumption' ? 0 : 1
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    publisherEmail: publisherEmail
    publisherName: publisherName
  }
}

// APIM reads func-host-key from the vault with its own identity. The named value below must
// wait for this assignment, and the identity exists only once the service does, so the
// assignment is made from here (roles.bicep holds its definition).
module vaultAccess 'roles.bicep' = {
  name: '${deployment().name}-apim-vault'
  params: {
    keyVaultName: vault.name
    apimPrincipalId: apim.identity.principalId
  }
}

// The function host key, copied into the vault so that APIM holds only a reference to it.
resource funcHostKeySecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = {
  parent: vault
  name: 'func-host-key'
  properties: {
    value: listKeys('${functionApp.id}/host/default', '2023-12-01').functionKeys.default
    contentType: 'text/plain'
  }
}

resource tenantIdValue 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: 'tenant-id'
  properties: {
    displayName: 'tenant-id'
    value: entraTenantId
    secret: false
  }
}

resource apiAudienceValue 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: 'api-audience'
  properties: {
    displayName: 'api-audience'
    value: apiAudience
    secret: false
  }
}

resource apiClientIdValue 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: 'api-client-id'
  properties: {
    displayName: 'api-client-id'
    value: apiClientId
    secret: false
  }
}

resource corsOriginValue 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: 'cors-allowed-origin'
  properties: {
    displayName: 'cors-allowed-origin'
    value: corsAllowedOrigin
    secret: false
  }
}

// A Key Vault named value: versionless, so APIM picks up a new version of the secret within
// four hours without a redeployment.
resource funcHostKeyValue 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: apim
  name: 'func-host-key'
  properties: {
    displayName: 'func-host-key'
    secret: true
    keyVault: {
      secretIdentifier: '${vault.properties.vaultUri}secrets/${funcHostKeySecret.name}'
    }
  }
  dependsOn: [
    vaultAccess
  ]
}

// The Function App. The host key goes in x-functions-key, which the Functions host checks
// for functions with authLevel "function"; the caller's Authorization header is left as it is.
resource backend 'Microsoft.ApiManagement/service/backends@2024-05-01' = {
  parent: apim
  name: 'chgate-func'
  properties: {
    description: 'The chgate Function App'
    protocol: 'http'
    url: 'https://${functionApp.properties.defaultHostName}/api'
    resourceId: '${environment().resourceManager}${substring(functionApp.id, 1)}'
    credentials: {
      header: {
        'x-functions-key': [
          '{{func-host-key}}'
        ]
      }
    }
    tls: {
      validateCertificateChain: true
      validateCertificateName: true
    }
  }
  dependsOn: [
    funcHostKeyValue
  ]
}

// The endpoint catalog's OpenAPI document, written by `handler openapi`. Its paths are
// relative to the Functions route prefix (/api), which the backend URL carries. loadTextContent
// takes at most 131,072 characters; past that, switch to string(loadJsonContent(...)).
resource api 'Microsoft.ApiManagement/service/apis@2024-05-01' = {
  parent: apim
  name: 'chgate'
  properties: {
    displayName: 'chgate'
    description: 'ClickHouse analytics behind an identity-aware API.'
    path: apiPath
    protocols: [
      'https'
    ]
    // Callers are identified by their bearer token, not by an APIM subscription key.
    subscriptionRequired: false
    apiType: 'http'
    format: 'openapi+json'
    value: loadTextContent('../openapi.json')
    // Required query parameters stay query parameters: by default the import would move them
    // into the operation's URL template, and a request without one would match no operation
    // (404) instead of reaching the handler's 400 that names the parameter.
    translateRequiredQueryParameters: 'query'
    serviceUrl: 'https://${functionApp.properties.defaultHostName}/api'
  }
}

// policies/api.xml is well-formed XML (expressions with double quotes in single-quoted
// attributes, angle brackets as entities), deployed as it is with format xml, whose parser
// decodes the entities; rawxml would take them verbatim.
var policyXml = loadTextContent('../policies/api.xml')
// quota-by-key exists in the classic tiers only; a v2 tier refuses a policy that contains it.
var classicOnlyBegin = '<!-- classic-tiers-only:begin -->'
var classicOnlyEnd = '<!-- classic-tiers-only:end -->'
var policyWithoutClassicOnly = '${substring(policyXml, 0, indexOf(policyXml, classicOnlyBegin))}${substring(policyXml, indexOf(policyXml, classicOnlyEnd) + length(classicOnlyEnd))}'
var policyForSku = isV2 ? policyWithoutClassicOnly : policyXml

resource apiPolicy 'Microsoft.ApiManagement/service/apis/policies@2024-05-01' = {
  parent: api
  name: 'policy'
  properties: {
    format: 'xml'
    value: policyForSku
  }
  // APIM checks on save that every named value and backend the policy names exists.
  dependsOn: [
    tenantIdValue
    apiAudienceValue
    apiClientIdValue
    corsOriginValue
    backend
  ]
}

resource logger 'Microsoft.ApiManagement/service/loggers@2024-05-01' = {
  parent: apim
  name: 'appinsights'
  properties: {
    loggerType: 'applicationInsights'
    description: 'Application Insights shared with the Function App'
    resourceId: appInsights.id
    credentials: {
      instrumentationKey: appInsights.properties.InstrumentationKey
    }
    isBuffered: true
  }
}

// W3C correlation: APIM sends traceparent to the Function App, and the handler continues that
// trace, so the gateway request, the function request and its ClickHouse query share one
// operation id. No headers or bodies are logged: they carry bearer tokens and tenant data.
resource diagnostic 'Microsoft.ApiManagement/service/diagnostics@2024-05-01' = {
  parent: apim
  name: 'applicationinsights'
  properties: {
    loggerId: logger.id
    alwaysLog: 'allErrors'
    httpCorrelationProtocol: 'W3C'
    verbosity: 'information'
    sampling: {
      samplingType: 'fixed'
      percentage: 100
    }
    frontend: {
      request: {
        headers: []
        body: { bytes: 0 }
      }
      response: {
        headers: []
        body: { bytes: 0 }
      }
    }
    backend: {
      request: {
        headers: []
        body: { bytes: 0 }
      }
      response: {
        headers: []
        body: { bytes: 0 }
      }
    }
  }
}

output name string = apim.name
output gatewayUrl string = apim.properties.gatewayUrl
output apiBaseUrl string = '${apim.properties.gatewayUrl}/${apiPath}'
@description('ARM id of the chgate API, for listDebugCredentials (docs/apim.md).')
output apiId string = api.id
output principalId string = apim.identity.principalId
